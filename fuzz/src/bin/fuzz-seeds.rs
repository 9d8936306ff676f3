//! Writes the seed corpora (`edgewarden_fuzz::seeds`) under the directory given as the first argument
//! (`fuzz/corpus` when run by `cargo xtask fuzz --seeds`) and the dictionaries made from them
//! (`edgewarden_fuzz::dict`) under the second (`fuzz/dict`), after checking the fuzz crate's copies of the
//! product's formats (record checksum, shared-data keys) against the product itself.

fn main() {
    let (Some(dir), Some(dict_dir)) = (std::env::args_os().nth(1), std::env::args_os().nth(2))
    else {
        eprintln!("usage: fuzz-seeds <corpus directory> <dictionary directory>");
        std::process::exit(2);
    };
    let dict_dir = std::path::Path::new(&dict_dir);
    match edgewarden_fuzz::dict::write_all(&edgewarden_fuzz::seeds::all(), dict_dir) {
        Ok(n) => println!("wrote {n} dictionary words under {}", dict_dir.display()),
        Err(e) => {
            eprintln!(
                "cannot write dictionaries under {}: {e}",
                dict_dir.display()
            );
            std::process::exit(1);
        }
    }
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
