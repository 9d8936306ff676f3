//! Writes the seed corpora (`edgewarden_fuzz::seeds`) under the directory given as the only argument
//! (`fuzz/corpus` when run by `cargo xtask fuzz --seeds`), after checking the fuzz crate's copies of
//! the product's formats (record checksum, shared-data keys) against the product itself.

fn main() {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: fuzz-seeds <corpus directory>");
        std::process::exit(2);
    };
    edgewarden_fuzz::checksum::check_against_core();
    edgewarden_fuzz::check_shared_keys();
    match edgewarden_fuzz::seeds::write_all(std::path::Path::new(&dir)) {
        Ok(n) => println!(
            "wrote {n} seeds under {}",
            std::path::Path::new(&dir).display()
        ),
        Err(e) => {
            eprintln!(
                "cannot write seeds under {}: {e}",
                std::path::Path::new(&dir).display()
            );
            std::process::exit(1);
        }
    }
}
