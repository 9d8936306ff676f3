//! AFL++ entry point of the `jwks` target (see `edgewarden_fuzz::jwks`); outside AFL it runs once on stdin.

fn main() {
    afl::fuzz!(|data: &[u8]| edgewarden_fuzz::jwks(data));
}
