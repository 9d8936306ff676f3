//! AFL++ entry point of the `token` target (see `edgewarden_fuzz::token`); outside AFL it runs once on stdin.

fn main() {
    afl::fuzz!(|data: &[u8]| edgewarden_fuzz::token(data));
}
