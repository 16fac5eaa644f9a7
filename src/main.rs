fn main() {
    std::process::exit(ccflow::cli::main());
}
