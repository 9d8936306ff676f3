//! AFL++ entry point of the `jwks` target (see `edgewarden_fuzz::jwks`); outside AFL it runs once on stdin.
//! Under AFL it first runs the target's seeds before the fork server starts (`edgewarden_fuzz::warm_up`).

fn main() {
    edgewarden_fuzz::warm_up("jwks", edgewarden_fuzz::jwks);
    afl::fuzz!(|data: &[u8]| edgewarden_fuzz::jwks(data));
}
