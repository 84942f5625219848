//! `ferry`: the command line. Just argument parsing and glue; the work lives in the libraries.

fn main() -> anyhow::Result<()> {
    Ok(())
}
