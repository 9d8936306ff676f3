//! AFL++ entry point of the `feed_binary` target (see `edgewarden_fuzz::feed_binary`); outside AFL it runs once on stdin.
//! Under AFL it first runs the target's seeds before the fork server starts (`edgewarden_fuzz::warm_up`).

fn main() {
    edgewarden_fuzz::warm_up("feed_binary", edgewarden_fuzz::feed_binary);
    afl::fuzz!(|data: &[u8]| edgewarden_fuzz::feed_binary(data));
}
