//! AFL++ entry point of the `config` target (see `edgewarden_fuzz::config`); outside AFL it runs once on stdin.

fn main() {
    afl::fuzz!(|data: &[u8]| edgewarden_fuzz::config(data));
}
