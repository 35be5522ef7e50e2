use clap::Parser as _;

fn main() {
    let cli = coresvc::cli::Cli::parse();
    if let Err(e) = coresvc::cli::main(cli) {
        // A configuration error already carries file:line:col and every problem.
        eprintln!("coresvc: {e:#}");
        std::process::exit(1);
    }
}
