//! AFL++ entry point of the `feed_binary` target (see `edgewarden_fuzz::feed_binary`); outside AFL it runs once on stdin.

fn main() {
    afl::fuzz!(|data: &[u8]| edgewarden_fuzz::feed_binary(data));
}
