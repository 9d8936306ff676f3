//! AFL++ entry point of the `admin` target (see `edgewarden_fuzz::admin`); outside AFL it runs once on stdin.

fn main() {
    afl::fuzz!(|data: &[u8]| edgewarden_fuzz::admin(data));
}
