//! AFL++ entry point of the `headers` target (see `edgewarden_fuzz::headers`); outside AFL it runs once on stdin.

fn main() {
    afl::fuzz!(|data: &[u8]| edgewarden_fuzz::headers(data));
}
