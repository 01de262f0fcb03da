//! `tlsrelay manpage` (hidden): tlsrelay(8) in roff, generated from the clap
//! definitions so that the packaged page cannot drift from the real options.

use std::io::Write;

use super::{CONFIG_ENV, SYSTEM_CONFIG};

/// Writes the manual page of `cmd` (the whole command line) to `out`.
pub fn write(cmd: clap::Command, out: &mut dyn Write) -> anyhow::Result<()> {
    let man = clap_mangen::Man::new(cmd.version(env!("CARGO_PKG_VERSION")))
        .section("8")
        .manual("System Manager's Manual");
    // One render (each render_* part would repeat the roff preamble), then ours.
    man.render(out)?;
    out.write_all(files_section().as_bytes())?;
    Ok(())
}

/// FILES, ENVIRONMENT and SEE ALSO, from the same constants the code uses.
fn files_section() -> String {
    format!(
        r#".SH ENVIRONMENT
.TP
\fB{CONFIG_ENV}\fR
Configuration file to use when \fB\-c\fR is not given.
.TP
\fBRUST_LOG\fR
Log filter; overrides \fBlog.level\fR. Logs go to standard error (journald under systemd).
.SH FILES
.TP
\fB{SYSTEM_CONFIG}\fR
Configuration file used when neither \fB\-c\fR nor \fB{CONFIG_ENV}\fR is given and it exists;
without any, the built\-in defaults apply. Check it with \fBtlsrelay config check\fR.
.TP
\fB/usr/share/doc/tlsrelay/tlsrelay.toml.example\fR
Every configuration key with its default value and explanation.
.TP
\fB/var/spool/tlsrelay\fR
The packaged spool (\fBspool.dir\fR): queued mail, the MTA\-STS cache, TLS\-RPT data
and the control socket used by \fBtlsrelay queue\fR.
.SH SECURITY
\fBserve\fR refuses to run as root unless \fB[server] user\fR names an unprivileged
account; it then binds its listening sockets as root and switches to that user
before it opens the spool. The packaged systemd unit starts it as user \fBtlsrelay\fR.
.SH "SEE ALSO"
\fBpostconf\fR(5) (relayhost), \fBsystemctl\fR(1), \fBjournalctl\fR(1)
"#
    )
}
