//! AFL++ entry point of the `feed` target (see `edgewarden_fuzz::feed`); outside AFL it runs once on stdin.

fn main() {
    afl::fuzz!(|data: &[u8]| edgewarden_fuzz::feed(data));
}
