//! AFL++ entry point of the `shared_state` target (see `edgewarden_fuzz::shared_state`); outside AFL it runs once on stdin.
//! Under AFL it first runs the target's seeds before the fork server starts (`edgewarden_fuzz::warm_up`).

fn main() {
    edgewarden_fuzz::warm_up("shared_state", edgewarden_fuzz::shared_state);
    afl::fuzz!(|data: &[u8]| edgewarden_fuzz::shared_state(data));
}
