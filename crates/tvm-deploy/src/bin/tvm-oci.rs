//! `tvm-oci`: builds the pyrovm OCI image without a Docker daemon (`make oci-image`).
//! Exit codes: 0 built or up to date, 1 build failure, 2 usage.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tvm_deploy::oci::{self, BuildOptions};

/// Build the pyrovm OCI image (layout + oci-archive) from Debian packages, the guest image
/// and the pyrovm binary, with mmdebstrap, umoci and skopeo.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The pyrovm binary [default: target/release/pyrovm].
    #[arg(long)]
    pyrovm: Option<PathBuf>,
    /// Guest image directory (vmlinux, initramfs.cpio, rootfs.erofs) [default: <cache>/current].
    #[arg(long, env = "TVM_IMAGE_DIR")]
    image_dir: Option<PathBuf>,
    /// Statically linked firecracker binary to include (with --jailer).
    #[arg(long, requires = "jailer")]
    firecracker: Option<PathBuf>,
    /// Statically linked jailer binary to include (with --firecracker).
    #[arg(long, requires = "firecracker")]
    jailer: Option<PathBuf>,
    /// Output directory for the layout, the archive and the report [default: target/oci].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Layer cache [default: <cache>/oci].
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Debian/Ubuntu suite of the base layer [default: the build host's release].
    #[arg(long)]
    suite: Option<String>,
    /// Rebuild the Debian base layer (picks up security updates).
    #[arg(long)]
    refresh_base: bool,
    /// Print the image reference the build tags, and exit.
    #[arg(long)]
    print_reference: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_reference {
        println!("{}", oci::reference());
        return ExitCode::SUCCESS;
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let mut opts = BuildOptions::new(&cwd);
    if let Some(p) = args.pyrovm {
        opts.pyrovm = p;
    }
    if let Some(d) = args.image_dir {
        opts.guest_image = d;
    }
    if let (Some(fc), Some(j)) = (args.firecracker, args.jailer) {
        opts.firecracker = Some((fc, j));
    }
    if let Some(o) = args.out {
        opts.out_dir = cwd.join(o);
    }
    if let Some(c) = args.cache_dir {
        opts.cache_dir = c;
    }
    opts.suite = args.suite;
    opts.refresh_base = args.refresh_base;
    if let Some(epoch) = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        opts.source_date_epoch = epoch;
    }
    let mut progress = |line: &str| eprintln!("==> tvm-oci: {line}");
    match oci::build(&opts, &mut progress) {
        Ok(r) => {
            let mib = r.archive_bytes as f64 / (1024.0 * 1024.0);
            let total = r
                .steps
                .iter()
                .find(|(step, _)| step == "total")
                .map_or_else(|| r.steps.iter().map(|(_, s)| s).sum(), |(_, s)| *s);
            if !r.up_to_date {
                for (step, secs) in &r.steps {
                    eprintln!("    {step:<26} {secs:>7.1} s");
                }
            }
            eprintln!(
                "==> tvm-oci: {} {} ({mib:.0} MiB, base {}{}) in {total:.1} s",
                r.reference,
                r.digest,
                r.suite,
                if r.firecracker {
                    ", with firecracker"
                } else {
                    ""
                },
            );
            println!("{}", r.archive.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("tvm-oci: {msg}");
            ExitCode::from(1)
        }
    }
}
