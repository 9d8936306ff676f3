//! AFL++ entry point of the `token_generated` target (see `edgewarden_fuzz::token_generated`); outside AFL it runs once on stdin.
//! Under AFL it first runs the target's seeds before the fork server starts (`edgewarden_fuzz::warm_up`).

fn main() {
    edgewarden_fuzz::warm_up("token_generated", edgewarden_fuzz::token_generated);
    afl::fuzz!(|data: &[u8]| edgewarden_fuzz::token_generated(data));
}
