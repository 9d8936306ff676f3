//! AFL++ entry point of the `token` target (see `edgewarden_fuzz::token`); outside AFL it runs once on stdin.
//! Under AFL it first runs the target's seeds before the fork server starts (`edgewarden_fuzz::warm_up`).

fn main() {
    edgewarden_fuzz::warm_up("token", edgewarden_fuzz::token);
    afl::fuzz!(|data: &[u8]| edgewarden_fuzz::token(data));
}
