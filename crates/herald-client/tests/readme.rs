//! The README's SDK example is `examples/readme.rs`, which the build compiles: the two stay equal.

#[test]
fn readme_sdk_example_is_examples_readme_rs() {
    let readme = include_str!("../../../README.md");
    let example = include_str!("../examples/readme.rs");
    let body = example
        .split_once("\n\n")
        .map(|(_, rest)| rest)
        .expect("a doc comment, a blank line, then the code");
    assert!(
        readme.contains(&format!("```rust\n{body}```")),
        "README.md's SDK example differs from crates/herald-client/examples/readme.rs"
    );
}
