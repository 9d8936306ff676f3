//! AFL++ entry point of the `token_generated` target (see `edgewarden_fuzz::token_generated`); outside AFL it runs once on stdin.

fn main() {
    afl::fuzz!(|data: &[u8]| edgewarden_fuzz::token_generated(data));
}
