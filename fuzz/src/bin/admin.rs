//! AFL++ entry point of the `admin` target (see `edgewarden_fuzz::admin`); outside AFL it runs once on stdin.
//! Under AFL it first runs the target's seeds before the fork server starts (`edgewarden_fuzz::warm_up`).

fn main() {
    edgewarden_fuzz::warm_up("admin", edgewarden_fuzz::admin);
    afl::fuzz!(|data: &[u8]| edgewarden_fuzz::admin(data));
}
