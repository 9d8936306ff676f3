//! AFL++ entry point of the `snapshot` target (see `edgewarden_fuzz::snapshot`); outside AFL it runs once on stdin.

fn main() {
    afl::fuzz!(|data: &[u8]| edgewarden_fuzz::snapshot(data));
}
