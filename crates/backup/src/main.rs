//! The `ferry-backup` executable: the extension as a process of its own (Ferry can also run
//! it in-process through a hidden subcommand of `ferry`).

fn main() -> std::process::ExitCode {
    ferry_backup::main_with_stdio()
}
