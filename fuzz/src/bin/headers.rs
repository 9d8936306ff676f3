//! AFL++ entry point of the `headers` target (see `edgewarden_fuzz::headers`); outside AFL it runs once on stdin.
//! Under AFL it first runs the target's seeds before the fork server starts (`edgewarden_fuzz::warm_up`).

fn main() {
    edgewarden_fuzz::warm_up("headers", edgewarden_fuzz::headers);
    afl::fuzz!(|data: &[u8]| edgewarden_fuzz::headers(data));
}
