//! AFL++ entry point of the `snapshot` target (see `edgewarden_fuzz::snapshot`); outside AFL it runs once on stdin.
//! Under AFL it first runs the target's seeds before the fork server starts (`edgewarden_fuzz::warm_up`).

fn main() {
    edgewarden_fuzz::warm_up("snapshot", edgewarden_fuzz::snapshot);
    afl::fuzz!(|data: &[u8]| edgewarden_fuzz::snapshot(data));
}
