//! Links the program with the workspace's linker script (`../link.rs`).

#[path = "../link.rs"]
mod link;

fn main() {
    link::link_with_script();
}
