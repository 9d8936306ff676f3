//! AFL++ entry point of the `config` target (see `edgewarden_fuzz::config`); outside AFL it runs once on stdin.
//! Under AFL it first runs the target's seeds before the fork server starts (`edgewarden_fuzz::warm_up`).

fn main() {
    edgewarden_fuzz::warm_up("config", edgewarden_fuzz::config);
    afl::fuzz!(|data: &[u8]| edgewarden_fuzz::config(data));
}
