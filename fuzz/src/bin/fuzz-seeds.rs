//! Writes the seed corpora (`edgewarden_fuzz::seeds`) under the directory given as the first argument
//! (`fuzz/corpus` when run by `cargo xtask fuzz --seeds`) and the dictionaries made from them
//! (`edgewarden_fuzz::dict`) under the second (`fuzz/dict`), after checking the fuzz crate's copies of the
//! product's formats (record checksum, shared-data keys) against the product itself.

use std::path::Path;

fn main() {
    let (Some(dir), Some(dict_dir)) = (std::env::args_os().nth(1), std::env::args_os().nth(2))
    else {
        eprintln!("usage: fuzz-seeds <corpus directory> <dictionary directory>");
        std::process::exit(2);
    };
    edgewarden_fuzz::checksum::check_against_core();
    edgewarden_fuzz::check_shared_keys();
    let seeds = edgewarden_fuzz::seeds::all();
    let (dir, dict_dir) = (Path::new(&dir), Path::new(&dict_dir));
    match edgewarden_fuzz::seeds::write_all(&seeds, dir) {
        Ok(n) => println!("wrote {n} seeds under {}", dir.display()),
        Err(e) => fail(format!("cannot write seeds under {}: {e}", dir.display())),
    }
    match edgewarden_fuzz::dict::write_all(&seeds, dict_dir) {
        Ok(n) => println!("wrote {n} dictionary words under {}", dict_dir.display()),
        Err(e) => fail(format!(
            "cannot write dictionaries under {}: {e}",
            dict_dir.display()
        )),
    }
}

fn fail(message: String) -> ! {
    eprintln!("{message}");
    std::process::exit(1);
}
