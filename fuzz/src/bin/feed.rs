//! AFL++ entry point of the `feed` target (see `edgewarden_fuzz::feed`); outside AFL it runs once on stdin.
//! Under AFL it first runs the target's seeds before the fork server starts (`edgewarden_fuzz::warm_up`).

fn main() {
    edgewarden_fuzz::warm_up("feed", edgewarden_fuzz::feed);
    afl::fuzz!(|data: &[u8]| edgewarden_fuzz::feed(data));
}
