//! Makes cargo re-embed the demo editor (`client-sdk/demo/dist`, see `src/http/demo.rs`) when a
//! front-end build adds or removes files: rust-embed's `include_bytes!` only tracks files
//! that already existed when the crate was compiled.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // A path that does not exist would make cargo rerun this script (and rebuild the crate)
    // on every build, so watch the nearest folder that does; stop at `client-sdk` rather than
    // scanning the whole repository.
    let watched = ["client-sdk/demo/dist", "client-sdk/demo", "client-sdk"]
        .into_iter()
        .find(|p| Path::new(p).is_dir());
    if let Some(dir) = watched {
        println!("cargo:rerun-if-changed={dir}");
    }
}
