//! AFL++ entry point of the `shared_state` target (see `edgewarden_fuzz::shared_state`); outside AFL it runs once on stdin.

fn main() {
    afl::fuzz!(|data: &[u8]| edgewarden_fuzz::shared_state(data));
}
