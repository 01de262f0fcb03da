//! One inbound ESMTP session: the command state machine.
//!
//! Replies are collected and written when the session is about to read again,
//! which is what PIPELINING (RFC 2920) asks of a server. Everything a client
//! sends before STARTTLS completes is forgotten once it does (RFC 3207 §4.2),
//! including pipelined bytes that followed the STARTTLS command.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use smtp_proto::{
    Error as ProtoError, MailFrom, RcptTo, Request, MAIL_BODY_8BITMIME, MAIL_BODY_BINARYMIME,
    MAIL_REQUIRETLS, MAIL_RET_FULL, MAIL_RET_HDRS, MAIL_SMTPUTF8, RCPT_NOTIFY_DELAY,
    RCPT_NOTIFY_FAILURE, RCPT_NOTIFY_NEVER, RCPT_NOTIFY_SUCCESS,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::auth::{decode_line, decode_plain};
use super::conn::Conn;
use super::throttle::Verdict;
use super::Shared;
use crate::model::address::{self, AddressError, Mailbox};
use crate::model::notify::Notify;
use crate::protocol::data::{normalize_line_ends, DataReceiver};
use crate::protocol::xtext;
use crate::spool::{self, BodyType, ClientInfo, DsnRet, Envelope, RcptState, Recipient};

/// Hops after which a message is taken to be looping (RFC 5321 §6.3).
const MAX_RECEIVED_HEADERS: usize = 100;

/// Why a session loop stopped reading.
enum Stop {
    /// The client closed the connection or an I/O error occurred.
    Closed,
    /// The session should end after the replies written so far.
    Quit,
}

/// What the session read while waiting for input.
enum Input {
    /// A complete command line (without CRLF).
    Line(Vec<u8>),
    /// A line longer than the limit (its bytes were skipped).
    TooLong,
}

/// A transaction in progress (after MAIL).
struct Transaction {
    sender: String,
    body: BodyType,
    smtputf8: bool,
    requiretls: bool,
    ret: Option<DsnRet>,
    envid: Option<String>,
    recipients: Vec<Recipient>,
    /// Bytes received so far by BDAT.
    bdat: Vec<u8>,
    /// Set when a BDAT chunk broke a limit: the rest of the chunks are refused.
    bdat_failed: bool,
    /// When all BDAT chunks must have arrived (`server.data_deadline` after the first).
    data_deadline: Option<Instant>,
}

/// One client session.
pub(super) struct Session {
    shared: Arc<Shared>,
    peer: SocketAddr,
    conn: Conn,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    helo: Option<String>,
    esmtp: bool,
    auth_user: Option<String>,
    tx: Option<Transaction>,
    errors: u32,
    shutdown: watch::Receiver<bool>,
}

impl Session {
    pub(super) fn new(
        shared: Arc<Shared>,
        stream: TcpStream,
        peer: SocketAddr,
        shutdown: watch::Receiver<bool>,
    ) -> Session {
        Session {
            shared,
            peer,
            conn: Conn::Plain(stream),
            rbuf: Vec::with_capacity(4096),
            wbuf: Vec::with_capacity(1024),
            helo: None,
            esmtp: false,
            auth_user: None,
            tx: None,
            errors: 0,
            shutdown,
        }
    }

    fn cfg(&self) -> &crate::config::ServerConfig {
        &self.shared.config.server
    }

    /// Queues a reply; `esc` is the enhanced status code, empty where none belongs
    /// (greeting, HELO, 354).
    fn reply(&mut self, code: u16, esc: &str, text: &str) {
        crate::reporting::metrics::inbound_reply(code, esc);
        let line = if esc.is_empty() {
            format!("{code} {text}\r\n")
        } else {
            format!("{code} {esc} {text}\r\n")
        };
        self.wbuf.extend_from_slice(line.as_bytes());
    }

    /// A reply for a client mistake; counts towards `server.max_errors`.
    fn error(&mut self, code: u16, esc: &str, text: &str) {
        self.errors += 1;
        self.reply(code, esc, text);
    }

    async fn flush(&mut self) -> Result<(), Stop> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.wbuf);
        let res = tokio::time::timeout(self.cfg().command_timeout.get(), async {
            self.conn.write_all(&buf).await?;
            self.conn.flush().await
        })
        .await;
        match res {
            Ok(Ok(())) => Ok(()),
            _ => Err(Stop::Closed),
        }
    }

    /// Reads more bytes into `rbuf`, flushing pending replies first. Each read
    /// waits at most `timeout`, and never past `deadline`: without the deadline a
    /// client sending a byte now and then would hold its session for ever.
    /// With `idle`, a shutdown signal ends the wait with 421.
    async fn fill(&mut self, timeout: Duration, deadline: Instant, idle: bool) -> Result<(), Stop> {
        self.flush().await?;
        let mut chunk = [0u8; 16 * 1024];
        let mut shutdown = self.shutdown.clone();
        let by_deadline = deadline <= Instant::now() + timeout;
        let until = deadline.min(Instant::now() + timeout);
        let read = async { tokio::time::timeout_at(until, self.conn.read(&mut chunk)).await };
        let outcome = tokio::select! {
            r = read => Some(r),
            _ = shutdown.wait_for(|v| *v), if idle => None,
        };
        match outcome {
            None => {
                self.reply(421, "4.3.2", "Service shutting down; try again later");
                let _ = self.flush().await;
                Err(Stop::Quit)
            }
            Some(Err(_)) => {
                self.timed_out(idle, by_deadline).await;
                Err(Stop::Quit)
            }
            Some(Ok(Ok(0))) | Some(Ok(Err(_))) => Err(Stop::Closed),
            Some(Ok(Ok(n))) => {
                self.rbuf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
        }
    }

    /// Says 421 4.4.2 for an idle timeout or a passed deadline.
    async fn timed_out(&mut self, idle: bool, by_deadline: bool) {
        let what = if idle { "command" } else { "message data" };
        let text = if by_deadline {
            let limit = if idle {
                self.cfg().command_deadline
            } else {
                self.cfg().data_deadline
            };
            format!("The {what} was not complete within {limit}; closing connection")
        } else {
            format!("Timeout waiting for {what}; closing connection")
        };
        tracing::info!(client = %self.peer, by_deadline, "timeout waiting for {what}");
        self.reply(421, "4.4.2", &text);
        let _ = self.flush().await;
    }

    /// Reads one command line, enforcing `server.max_line_length`.
    async fn read_line(&mut self) -> Result<Input, Stop> {
        let max = self.cfg().max_line_length;
        let timeout = self.cfg().command_timeout.get();
        let deadline = Instant::now() + self.cfg().command_deadline.get();
        let mut skipping = false;
        loop {
            if let Some(pos) = memchr(&self.rbuf, b'\n') {
                let line: Vec<u8> = self.rbuf.drain(..=pos).collect();
                if skipping || line.len() > max {
                    return Ok(Input::TooLong);
                }
                let end =
                    line.len() - 1 - usize::from(line.len() >= 2 && line[line.len() - 2] == b'\r');
                return Ok(Input::Line(line[..end].to_vec()));
            }
            if self.rbuf.len() > max {
                skipping = true;
                self.rbuf.clear();
            }
            self.fill(timeout, deadline, self.tx.is_none() && !skipping)
                .await?;
        }
    }

    /// Runs the session to its end.
    pub(super) async fn run(mut self) {
        tracing::debug!(client = %self.peer, "session start");
        let host = self.cfg().hostname.clone();
        self.reply(220, "", &format!("{host} ESMTP tlsrelay"));
        loop {
            let input = match self.read_line().await {
                Ok(i) => i,
                Err(_) => break,
            };
            let keep_going = match input {
                Input::TooLong => {
                    let max = self.cfg().max_line_length;
                    self.error(
                        500,
                        "5.5.2",
                        &format!("Line too long; the limit is {max} octets"),
                    );
                    true
                }
                Input::Line(line) => match self.command(line).await {
                    Ok(()) => true,
                    Err(Stop::Quit) => {
                        let _ = self.flush().await;
                        false
                    }
                    Err(Stop::Closed) => false,
                },
            };
            if !keep_going {
                break;
            }
            if self.errors > self.cfg().max_errors {
                tracing::info!(client = %self.peer, errors = self.errors, "too many errors; closing");
                self.reply(421, "4.7.0", "Too many errors; closing connection");
                let _ = self.flush().await;
                break;
            }
        }
        let _ = self.conn.shutdown().await;
        tracing::debug!(client = %self.peer, "session end");
    }

    async fn command(&mut self, raw: Vec<u8>) -> Result<(), Stop> {
        let mut line = raw.clone();
        line.extend_from_slice(b"\r\n");
        let parsed = Request::parse(&mut line.iter()).map(Request::into_owned);
        match parsed {
            Ok(Request::Ehlo { host }) => self.ehlo(host, true),
            Ok(Request::Helo { host }) => self.ehlo(host, false),
            Ok(Request::Lhlo { .. }) => self.error(500, "5.5.1", "LHLO is for LMTP; use EHLO"),
            Ok(Request::Mail { from }) => self.mail(checked_path(&raw, &from.address), from),
            Ok(Request::Rcpt { to }) => self.rcpt(checked_path(&raw, &to.address), to),
            Ok(Request::Data) => return self.data().await,
            Ok(Request::Bdat { chunk_size, is_last }) => return self.bdat(chunk_size, is_last).await,
            Ok(Request::Rset) => {
                self.tx = None;
                self.reply(250, "2.0.0", "Ok");
            }
            Ok(Request::Noop { .. }) => self.reply(250, "2.0.0", "Ok"),
            Ok(Request::Vrfy { .. }) => self.reply(
                252,
                "2.5.2",
                "Cannot VRFY user, but will accept the message and attempt delivery",
            ),
            Ok(Request::Expn { .. }) => self.reply(502, "5.5.1", "EXPN is not supported"),
            Ok(Request::Help { .. }) => self.reply(
                214,
                "2.0.0",
                "tlsrelay relays mail only over authenticated TLS; commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP VRFY QUIT STARTTLS AUTH HELP",
            ),
            Ok(Request::Quit) => {
                self.reply(221, "2.0.0", "Bye");
                return Err(Stop::Quit);
            }
            // RFC 3207 §4: STARTTLS takes no parameters.
            Ok(Request::StartTls) if raw.get(8..).is_some_and(|p| !p.trim_ascii().is_empty()) => {
                self.error(501, "5.5.4", "Syntax: STARTTLS takes no parameters")
            }
            Ok(Request::StartTls) => return self.starttls().await,
            Ok(Request::Auth { mechanism, initial_response }) => {
                return self.auth(mechanism, initial_response).await
            }
            Ok(Request::Etrn { .. }) | Ok(Request::Atrn { .. }) | Ok(Request::Burl { .. }) => {
                self.error(502, "5.5.1", "Command not implemented")
            }
            Err(e) => self.syntax_error(e),
        }
        Ok(())
    }

    fn syntax_error(&mut self, e: ProtoError) {
        match e {
            ProtoError::UnknownCommand => self.error(500, "5.5.2", "Command unrecognized"),
            ProtoError::InvalidSenderAddress => {
                self.error(501, "5.1.7", "Bad sender address syntax")
            }
            ProtoError::InvalidRecipientAddress => {
                self.error(501, "5.1.3", "Bad recipient address syntax")
            }
            ProtoError::SyntaxError { syntax } => {
                self.error(501, "5.5.4", &format!("Syntax: {syntax}"))
            }
            ProtoError::InvalidParameter { param } => self.error(
                501,
                "5.5.4",
                &format!("Invalid value for parameter {param}"),
            ),
            ProtoError::UnsupportedParameter { param } => {
                self.error(555, "5.5.4", &format!("Unsupported parameter {param}"))
            }
            _ => self.error(500, "5.5.2", "Syntax error"),
        }
    }

    fn ehlo(&mut self, host: String, esmtp: bool) {
        // A domain or address literal never holds controls; echoing them would
        // put a client's NUL or escape sequence into our reply and trace header.
        if host.chars().any(char::is_control) {
            return self.error(
                501,
                "5.5.2",
                "Invalid domain name: control characters are not allowed",
            );
        }
        self.tx = None;
        self.helo = Some(host.clone());
        self.esmtp = esmtp;
        let name = self.cfg().hostname.clone();
        if !esmtp {
            self.reply(250, "", &name);
            return;
        }
        let tls = matches!(self.conn, Conn::Tls(_));
        let mut lines = vec![
            format!("{name} greets {host}"),
            "PIPELINING".to_string(),
            format!("SIZE {}", self.cfg().max_message_size),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "ENHANCEDSTATUSCODES".into(),
            "CHUNKING".into(),
            "DSN".into(),
        ];
        if self.shared.credentials.tls().is_some() && !tls {
            lines.push("STARTTLS".into());
        }
        if tls && self.shared.credentials.users().is_some() && self.auth_user.is_none() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        if tls {
            lines.push("REQUIRETLS".into());
        }
        let last = lines.len() - 1;
        for (i, l) in lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            self.wbuf
                .extend_from_slice(format!("250{sep}{l}\r\n").as_bytes());
        }
    }

    /// The reply to a MAIL or RCPT path that was not taken; `esc` is 5.1.7 for
    /// the sender, 5.1.3 for a recipient.
    fn bad_path(&mut self, e: AddressError, esc: &str, whose: &str) {
        match e {
            AddressError::Unrepresentable => self.error(
                553,
                esc,
                &format!(
                    "The {whose} address contains a control character, which SMTP cannot carry"
                ),
            ),
            AddressError::Syntax => self.error(
                501,
                esc,
                &format!("Bad {whose} address syntax; a full address (user@domain) is needed"),
            ),
        }
    }

    /// With `server.sender_login_match`, why an authenticated user may not use `sender`.
    fn sender_refusal(&self, sender: &str) -> Option<String> {
        let user = self.auth_user.as_deref()?;
        let users = self.shared.credentials.users()?;
        if !self.cfg().sender_login_match || users.may_send_as(user, sender) {
            return None;
        }
        Some(format!(
            "Sender address <{sender}> is not owned by user {user}; \
             use your own address (server.sender_login_match)"
        ))
    }

    fn may_relay(&self) -> bool {
        self.auth_user.is_some()
            || self
                .cfg()
                .relay_networks
                .iter()
                .any(|n| n.contains(self.peer.ip()))
    }

    fn mail(&mut self, path: Result<Option<Mailbox>, AddressError>, from: MailFrom<String>) {
        if self.helo.is_none() {
            return self.error(503, "5.5.1", "Send EHLO first");
        }
        if self.tx.is_some() {
            return self.error(503, "5.5.1", "Nested MAIL command; send RSET first");
        }
        let sender = match path {
            Ok(sender) => sender.map(|m| m.to_string()).unwrap_or_default(),
            Err(e) => return self.bad_path(e, "5.1.7", "sender"),
        };
        if let Some(refusal) = self.sender_refusal(&sender) {
            return self.error(553, "5.7.1", &refusal);
        }
        let tls = matches!(self.conn, Conn::Tls(_));
        let smtputf8 = from.flags & MAIL_SMTPUTF8 != 0;
        if from.flags & MAIL_BODY_BINARYMIME != 0 {
            return self.error(555, "5.5.4", "BODY=BINARYMIME is not supported");
        }
        if from.flags & MAIL_REQUIRETLS != 0 && !tls {
            return self.error(
                555,
                "5.7.10",
                "REQUIRETLS is only offered after STARTTLS (RFC 8689)",
            );
        }
        if !self.esmtp && (from.flags != 0 || from.size != 0 || from.env_id.is_some()) {
            return self.error(555, "5.5.4", "MAIL parameters need EHLO, not HELO");
        }
        if let Some(Err(e)) = (from.env_id.as_deref()).map(|v| xtext::check_decoded("ENVID", v)) {
            return self.error(501, "5.5.4", &e.to_string());
        }
        if !from.address.is_ascii() && !smtputf8 {
            return self.error(
                553,
                "5.6.7",
                "Non-ASCII sender address needs the SMTPUTF8 parameter",
            );
        }
        let max = self.cfg().max_message_size;
        if from.size as u64 > max {
            return self.error(
                552,
                "5.3.4",
                &format!(
                    "Message size {} exceeds the limit of {max} octets",
                    from.size
                ),
            );
        }
        if let Some(why) = self.no_room(from.size as u64) {
            return self.error(452, "4.3.1", &why);
        }
        self.tx = Some(Transaction {
            sender,
            body: if from.flags & MAIL_BODY_8BITMIME != 0 {
                BodyType::EightBitMime
            } else {
                BodyType::SevenBit
            },
            smtputf8,
            requiretls: from.flags & MAIL_REQUIRETLS != 0,
            ret: dsn_ret(from.flags),
            envid: from.env_id,
            recipients: vec![],
            bdat: vec![],
            bdat_failed: false,
            data_deadline: None,
        });
        self.reply(250, "2.1.0", "Sender ok");
    }

    fn rcpt(&mut self, path: Result<Option<Mailbox>, AddressError>, to: RcptTo<String>) {
        let max = self.cfg().max_recipients;
        let may_relay = self.may_relay();
        let peer = self.peer.ip();
        let Some(tx) = self.tx.as_mut() else {
            return self.error(503, "5.5.1", "Send MAIL first");
        };
        if !may_relay {
            tracing::info!(client = %self.peer, rcpt = %to.address, "relay refused");
            return self.error(
                554,
                "5.7.1",
                &format!(
                    "Relay access denied: {peer} is not in server.relay_networks and has not authenticated"
                ),
            );
        }
        let smtputf8 = tx.smtputf8;
        if !to.address.is_ascii() && !smtputf8 {
            return self.error(
                553,
                "5.6.7",
                "Non-ASCII recipient address needs SMTPUTF8 on MAIL",
            );
        }
        let address = match path {
            Ok(Some(mailbox)) => mailbox.to_string(),
            Ok(None) => return self.bad_path(AddressError::Syntax, "5.1.3", "recipient"),
            Err(e) => return self.bad_path(e, "5.1.3", "recipient"),
        };
        if let Some(Err(e)) = (to.orcpt.as_deref()).map(|v| xtext::check_decoded("ORCPT", v)) {
            return self.error(501, "5.5.4", &e.to_string());
        }
        let Some(tx) = self.tx.as_mut() else { return };
        if tx.recipients.len() >= max {
            // 452 lets the client send the rest in another transaction (RFC 5321 §4.5.3.1.10).
            return self.reply(
                452,
                "4.5.3",
                &format!("Too many recipients; at most {max} per message"),
            );
        }
        let mut notify = Notify::default();
        for (flag, condition) in [
            (RCPT_NOTIFY_SUCCESS, Notify::SUCCESS),
            (RCPT_NOTIFY_FAILURE, Notify::FAILURE),
            (RCPT_NOTIFY_DELAY, Notify::DELAY),
            (RCPT_NOTIFY_NEVER, Notify::NEVER),
        ] {
            if to.flags & flag != 0 {
                notify = notify | condition;
            }
        }
        tx.recipients.push(Recipient {
            address,
            notify,
            orcpt: to.orcpt,
            state: RcptState::Queued,
            last_reason: None,
            status: None,
        });
        self.reply(250, "2.1.5", "Recipient ok");
    }

    async fn data(&mut self) -> Result<(), Stop> {
        match &self.tx {
            None => {
                self.error(503, "5.5.1", "Send MAIL first");
                return Ok(());
            }
            Some(tx) if tx.recipients.is_empty() => {
                self.error(503, "5.5.1", "No valid recipients");
                return Ok(());
            }
            Some(tx) if !tx.bdat.is_empty() || tx.bdat_failed => {
                self.error(503, "5.5.1", "DATA cannot follow BDAT in one transaction");
                return Ok(());
            }
            _ => {}
        }
        self.reply(354, "", "End data with <CR><LF>.<CR><LF>");
        let max = self.cfg().max_message_size as usize;
        let timeout = self.cfg().data_timeout.get();
        let deadline = Instant::now() + self.cfg().data_deadline.get();
        let mut receiver = DataReceiver::new();
        let mut body = Vec::new();
        let mut oversize = false;
        loop {
            let used = receiver.ingest(&self.rbuf, &mut body);
            self.rbuf.drain(..used.unwrap_or(self.rbuf.len()));
            if body.len() > max {
                oversize = true;
                body.clear();
            }
            if used.is_some() {
                break;
            }
            self.fill(timeout, deadline, false).await?;
        }
        if oversize {
            self.tx = None;
            self.error(
                552,
                "5.3.4",
                &format!("Message exceeds the size limit of {max} octets"),
            );
            return Ok(());
        }
        self.finish(body).await
    }

    async fn bdat(&mut self, size: usize, last: bool) -> Result<(), Stop> {
        let timeout = self.cfg().data_timeout.get();
        // One deadline for all chunks of a transaction, set by its first BDAT.
        let fresh = Instant::now() + self.cfg().data_deadline.get();
        let deadline = match self.tx.as_mut() {
            Some(tx) => *tx.data_deadline.get_or_insert(fresh),
            None => fresh,
        };
        let max = self.cfg().max_message_size as usize;
        // The chunk is read whatever the state, so the command stream stays in step.
        let keep = self
            .tx
            .as_ref()
            .is_some_and(|t| !t.recipients.is_empty() && !t.bdat_failed)
            && self
                .tx
                .as_ref()
                .map_or(0, |t| t.bdat.len())
                .saturating_add(size)
                <= max;
        let mut left = size;
        let mut chunk = Vec::new();
        loop {
            let take = left.min(self.rbuf.len());
            if keep {
                chunk.extend_from_slice(&self.rbuf[..take]);
            }
            self.rbuf.drain(..take);
            left -= take;
            if left == 0 {
                break;
            }
            self.fill(timeout, deadline, false).await?;
        }
        match &mut self.tx {
            None => self.error(503, "5.5.1", "Send MAIL first"),
            Some(tx) if tx.recipients.is_empty() => self.error(503, "5.5.1", "No valid recipients"),
            Some(tx) if tx.bdat_failed => {
                if last {
                    self.tx = None;
                }
                self.error(503, "5.5.1", "An earlier BDAT chunk was refused; send RSET")
            }
            Some(tx) if !keep => {
                tx.bdat_failed = true;
                tx.bdat = Vec::new();
                if last {
                    self.tx = None;
                }
                self.error(
                    552,
                    "5.3.4",
                    &format!("Message exceeds the size limit of {max} octets"),
                )
            }
            Some(tx) => {
                tx.bdat.extend_from_slice(&chunk);
                if last {
                    // Once over all chunks: a CR LF pair may straddle two of them.
                    let body = normalize_line_ends(&std::mem::take(&mut tx.bdat));
                    return self.finish(body).await;
                }
                self.reply(250, "2.0.0", &format!("{size} octets received"));
            }
        }
        Ok(())
    }

    /// Stores a complete message; answers 250 only once it is durable.
    async fn finish(&mut self, body: Vec<u8>) -> Result<(), Stop> {
        let Some(tx) = self.tx.take() else {
            return Ok(());
        };
        if count_received(&body) >= MAX_RECEIVED_HEADERS {
            self.reply(
                554,
                "5.4.6",
                "Too many Received headers; the message is looping",
            );
            return Ok(());
        }
        let (env, message) = self.envelope(tx, body);
        let spool = self.shared.spool.clone();
        let env2 = env.clone();
        let stored = tokio::task::spawn_blocking(move || spool.store_parts(&env2, message)).await;
        match stored {
            Ok(Ok(())) => self.accepted(env),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::StorageFull => {
                tracing::error!(client = %self.peer, error = %e, "spool full: message refused");
                self.reply(452, "4.3.1", "Insufficient system storage; try again later");
            }
            Ok(Err(e)) => {
                tracing::error!(client = %self.peer, error = %e, "cannot store message in the spool");
                self.cannot_store();
            }
            Err(e) => {
                tracing::error!(client = %self.peer, error = %e, "spool task failed");
                self.cannot_store();
            }
        }
        Ok(())
    }

    /// The envelope of a finished transaction and the message as it will be
    /// stored: our Received header, then the client's bytes (moved, not copied).
    fn envelope(&self, tx: Transaction, body: Vec<u8>) -> (Envelope, Vec<Vec<u8>>) {
        let id = spool::new_queue_id();
        let tls = self.conn.tls_description();
        let header = received_header(
            self.helo.as_deref().unwrap_or(""),
            &self.peer,
            &self.cfg().hostname,
            &id,
            protocol(self.esmtp, tls.is_some(), self.auth_user.is_some()),
            tls.as_ref(),
            &tx.recipients,
        )
        .into_bytes();
        let now = spool::now_unix();
        let env = Envelope {
            id,
            received_at: now,
            client: ClientInfo {
                addr: self.peer.to_string(),
                helo: self.helo.clone().unwrap_or_default(),
                tls: tls.as_ref().map(|(v, c)| format!("{v} {c}")),
                auth_user: self.auth_user.clone(),
            },
            sender: tx.sender,
            size: (header.len() + body.len()) as u64,
            body: tx.body,
            smtputf8: tx.smtputf8,
            requiretls: tx.requiretls,
            tls_required_no: has_tls_required_no(&body),
            tls_report: false,
            ret: tx.ret,
            envid: tx.envid,
            message_id: message_id(&body),
            recipients: tx.recipients,
            attempts: 0,
            next_attempt: now,
            delay_notice_sent: false,
            pending_dsns: vec![],
            held: false,
        };
        (env, vec![header, body])
    }

    /// The message is on disk: log it, hand it to delivery, and say 250.
    fn accepted(&mut self, env: Envelope) {
        tracing::info!(
            id = %env.id,
            client = %self.peer,
            from = %format!("<{}>", env.sender),
            nrcpt = env.recipients.len(),
            size = env.size,
            tls = %env.client.tls.as_deref().unwrap_or("no"),
            requiretls = env.requiretls,
            user = %env.client.auth_user.as_deref().unwrap_or("-"),
            message_id = %env.message_id.as_deref().unwrap_or("-"),
            "accepted"
        );
        metrics::counter!(crate::reporting::metrics::ACCEPTED).increment(1);
        metrics::counter!(crate::reporting::metrics::INBOUND_BYTES).increment(env.size);
        let reply = format!("Ok: queued as {}", env.id);
        if let Some(q) = &self.shared.queued {
            let _ = q.send(env);
        }
        self.reply(250, "2.0.0", &reply);
    }

    /// The spool could not take the message: the client should try again later.
    /// Why a new message cannot be taken now: the spool's file system is
    /// below its reserve (`[spool] min_free`), counting the declared size.
    fn no_room(&self, declared: u64) -> Option<String> {
        let reserve = self.shared.config.spool.min_free;
        let free = self.shared.spool.free_bytes().ok()?;
        (free < reserve.saturating_add(declared)).then(|| {
            tracing::warn!(
                free,
                reserve,
                declared,
                "spool below its free-space reserve; new mail is refused with 452"
            );
            "Insufficient system storage in the queue; try again later".to_string()
        })
    }

    fn cannot_store(&mut self) {
        self.reply(
            451,
            "4.3.0",
            "Cannot store the message right now; try again later",
        );
    }

    async fn starttls(&mut self) -> Result<(), Stop> {
        let Some(acceptor) = self.shared.credentials.tls() else {
            self.error(502, "5.5.1", "STARTTLS is not available");
            return Ok(());
        };
        if matches!(self.conn, Conn::Tls(_)) {
            self.error(503, "5.5.1", "TLS is already active");
            return Ok(());
        }
        self.reply(220, "2.0.0", "Ready to start TLS");
        self.flush().await?;
        // Bytes pipelined after STARTTLS were sent in clear: never act on them.
        self.rbuf.clear();
        let Conn::Plain(tcp) = std::mem::replace(&mut self.conn, Conn::Upgrading) else {
            return Err(Stop::Closed);
        };
        let timeout = self.cfg().command_timeout.get();
        match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => {
                self.conn = Conn::Tls(Box::new(tls));
                self.helo = None;
                self.esmtp = false;
                self.tx = None;
                self.auth_user = None;
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::info!(client = %self.peer, error = %e, "inbound TLS handshake failed");
                Err(Stop::Closed)
            }
            Err(_) => {
                tracing::info!(client = %self.peer, "inbound TLS handshake timed out");
                Err(Stop::Closed)
            }
        }
    }

    async fn auth(&mut self, mechanism: u64, initial: String) -> Result<(), Stop> {
        if !matches!(self.conn, Conn::Tls(_)) {
            self.error(530, "5.7.0", "Must issue a STARTTLS command first");
            return Ok(());
        }
        let Some(users) = self.shared.credentials.users() else {
            self.error(502, "5.5.1", "AUTH is not available");
            return Ok(());
        };
        if self.auth_user.is_some() {
            self.error(503, "5.5.1", "Already authenticated");
            return Ok(());
        }
        if self.tx.is_some() {
            self.error(
                503,
                "5.5.1",
                "AUTH is not allowed during a mail transaction",
            );
            return Ok(());
        }
        if self.shared.auth_gate.client_locked(self.peer.ip()) {
            return Err(self.client_locked());
        }
        let Some(creds) = self.credentials(mechanism, initial).await? else {
            return Ok(());
        };
        let Some((user, pass)) = creds else {
            self.error(501, "5.5.2", "Cannot decode the AUTH response");
            return Ok(());
        };
        let verdict = self
            .shared
            .auth_gate
            .check(self.peer.ip(), &users, &user, pass)
            .await;
        self.auth_verdict(verdict, user)
    }

    /// Reads the user and password of PLAIN or LOGIN. `None` when the exchange
    /// ended with its own reply (cancelled, unknown mechanism); `Some(None)` when
    /// the response cannot be decoded.
    async fn credentials(
        &mut self,
        mechanism: u64,
        initial: String,
    ) -> Result<Option<Option<(String, String)>>, Stop> {
        if mechanism == smtp_proto::AUTH_PLAIN {
            let response = if initial.is_empty() {
                match self.challenge("").await? {
                    Some(r) => r,
                    None => return Ok(None),
                }
            } else {
                initial
            };
            Ok(Some(decode_plain(&response)))
        } else if mechanism == smtp_proto::AUTH_LOGIN {
            let user = if initial.is_empty() {
                match self.challenge("VXNlcm5hbWU6").await? {
                    Some(r) => decode_line(&r),
                    None => return Ok(None),
                }
            } else {
                decode_line(&initial)
            };
            Ok(self
                .challenge("UGFzc3dvcmQ6")
                .await?
                .map(|r| user.zip(decode_line(&r))))
        } else {
            self.error(
                504,
                "5.5.4",
                "Unrecognized authentication type; use PLAIN or LOGIN",
            );
            Ok(None)
        }
    }

    /// Answers an AUTH attempt after the password check (or its refusal).
    fn auth_verdict(&mut self, verdict: Verdict, user: String) -> Result<(), Stop> {
        match verdict {
            Verdict::Ok => {
                tracing::info!(client = %self.peer, user = %user, "authenticated");
                self.auth_user = Some(user);
                self.reply(235, "2.7.0", "Authentication successful");
            }
            Verdict::Failed => {
                tracing::warn!(client = %self.peer, user = %user, "authentication failed");
                self.error(535, "5.7.8", "Authentication credentials invalid");
            }
            Verdict::ClientLocked => return Err(self.client_locked()),
            Verdict::UserLocked => {
                tracing::warn!(client = %self.peer, user = %user, "AUTH refused: user locked out");
                self.error(
                    454,
                    "4.7.0",
                    "Too many failed authentications for this user; try again later",
                );
            }
            Verdict::Busy => {
                tracing::warn!(client = %self.peer, "AUTH refused: server.auth_queue_limit reached");
                self.reply(
                    454,
                    "4.7.0",
                    "Too many authentications in progress; try again later",
                );
            }
        }
        Ok(())
    }

    /// The client's address is locked out of AUTH: 421, and the session ends.
    fn client_locked(&mut self) -> Stop {
        tracing::warn!(client = %self.peer, "AUTH refused: address locked out");
        self.reply(
            421,
            "4.7.0",
            "Too many failed authentications from your address; try again later",
        );
        Stop::Quit
    }

    /// Sends a 334 challenge and reads the answer; `None` when the client cancelled.
    async fn challenge(&mut self, text: &str) -> Result<Option<String>, Stop> {
        self.wbuf
            .extend_from_slice(format!("334 {text}\r\n").as_bytes());
        match self.read_line().await? {
            Input::Line(l) if l == b"*" => {
                self.error(501, "5.0.0", "Authentication cancelled");
                Ok(None)
            }
            Input::Line(l) => Ok(Some(String::from_utf8_lossy(&l).into_owned())),
            Input::TooLong => {
                self.error(500, "5.5.2", "Line too long");
                Ok(None)
            }
        }
    }
}

/// The RET parameter of MAIL (RFC 3461 §4.3).
fn dsn_ret(flags: u64) -> Option<DsnRet> {
    if flags & MAIL_RET_FULL != 0 {
        Some(DsnRet::Full)
    } else if flags & MAIL_RET_HDRS != 0 {
        Some(DsnRet::Hdrs)
    } else {
        None
    }
}

/// The mailbox of a MAIL or RCPT line, parsed from the raw line: smtp-proto
/// drops the quoting, so its address alone cannot say where a quoted local
/// part ends. Its address must agree with ours, or the command is refused.
pub(crate) fn checked_path(
    raw: &[u8],
    proto_address: &str,
) -> Result<Option<Mailbox>, AddressError> {
    let text = std::str::from_utf8(raw).map_err(|_| AddressError::Syntax)?;
    let (_, after) = text.split_once(':').ok_or(AddressError::Syntax)?;
    let (mailbox, _) = address::parse_path(after.trim_start_matches(' '))?;
    let ours = mailbox.as_ref().map(Mailbox::to_string).unwrap_or_default();
    if ours == proto_address {
        Ok(mailbox)
    } else {
        Err(AddressError::Syntax)
    }
}

fn memchr(hay: &[u8], needle: u8) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

/// The protocol keyword of RFC 3848 for the Received header.
fn protocol(esmtp: bool, tls: bool, auth: bool) -> &'static str {
    match (esmtp, tls, auth) {
        (false, _, _) => "SMTP",
        (true, false, false) => "ESMTP",
        (true, true, false) => "ESMTPS",
        (true, false, true) => "ESMTPA",
        (true, true, true) => "ESMTPSA",
    }
}

/// Our trace header (RFC 5321 §4.4), folded, ending in CRLF.
fn received_header(
    helo: &str,
    peer: &SocketAddr,
    hostname: &str,
    id: &str,
    protocol: &str,
    tls: Option<&(String, String)>,
    recipients: &[Recipient],
) -> String {
    let helo = sanitize(helo);
    let ip = match peer.ip() {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("IPv6:{v6}"),
    };
    let mut h = format!(
        "Received: from {helo} ([{ip}])\r\n\tby {hostname} (tlsrelay) with {protocol} id {id}"
    );
    if let Some((version, cipher)) = tls {
        h.push_str(&format!("\r\n\t(version={version} cipher={cipher})"));
    }
    if let [only] = recipients {
        h.push_str(&format!("\r\n\tfor <{}>", sanitize(&only.address)));
    }
    h.push_str(&format!(
        ";\r\n\t{}\r\n",
        chrono::Local::now().format("%a, %d %b %Y %H:%M:%S %z")
    ));
    h
}

/// Keeps client-supplied text from breaking the header syntax.
fn sanitize(s: &str) -> Cow<'_, str> {
    if s.chars().all(|c| c.is_ascii_graphic() || !c.is_ascii()) && !s.contains(['(', ')', ';']) {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(
            s.chars()
                .map(|c| {
                    if c.is_ascii_graphic() && !"();".contains(c) || !c.is_ascii() {
                        c
                    } else {
                        '_'
                    }
                })
                .collect(),
        )
    }
}

/// Whether the header section has `TLS-Required: No` (RFC 8689 §5).
fn has_tls_required_no(msg: &[u8]) -> bool {
    for line in msg.split(|&b| b == b'\n') {
        if line == b"\r" || line.is_empty() {
            break;
        }
        if line.len() >= 13 && line[..13].eq_ignore_ascii_case(b"tls-required:") {
            let value = String::from_utf8_lossy(&line[13..]);
            return value.trim().eq_ignore_ascii_case("no");
        }
    }
    false
}

/// The Message-ID of the message's header section, as mail-parser reads it;
/// control characters are kept out of log lines by the log writer.
fn message_id(msg: &[u8]) -> Option<String> {
    let end = msg
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(msg.len(), |p| p + 4);
    let headers = mail_parser::MessageParser::new().parse_headers(&msg[..end])?;
    headers
        .message_id()
        .map(|id| id.chars().take(998).collect())
}

/// Counts Received header fields in the message's header section.
fn count_received(msg: &[u8]) -> usize {
    let mut n = 0;
    for line in msg.split(|&b| b == b'\n') {
        if line == b"\r" || line.is_empty() {
            break;
        }
        if line.len() >= 9 && line[..9].eq_ignore_ascii_case(b"received:") {
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols() {
        let cases = [
            ((false, true, true), "SMTP"),
            ((true, false, false), "ESMTP"),
            ((true, true, false), "ESMTPS"),
            ((true, false, true), "ESMTPA"),
            ((true, true, true), "ESMTPSA"),
        ];
        for ((e, t, a), want) in cases {
            assert_eq!(protocol(e, t, a), want);
        }
    }

    #[test]
    fn message_ids_come_from_the_header_section_only() {
        let cases: [(&[u8], Option<&str>); 5] = [
            (
                b"Message-ID: <abc@x.test>\r\nSubject: s\r\n\r\nbody\r\n",
                Some("abc@x.test"),
            ),
            (
                b"message-id:\r\n <folded@x.test>\r\n\r\n",
                Some("folded@x.test"),
            ),
            (b"Subject: s\r\n\r\nMessage-ID: <in-body@x.test>\r\n", None),
            (b"Subject: no id\r\n\r\n", None),
            (b"", None),
        ];
        for (msg, want) in cases {
            let got = message_id(msg);
            assert_eq!(got.as_deref(), want, "{}", String::from_utf8_lossy(msg));
        }
    }

    #[test]
    fn received_header_shape() {
        let peer: SocketAddr = "192.0.2.7:4000".parse().unwrap();
        let rcpt = Recipient {
            address: "x@example.net".into(),
            notify: Notify::default(),
            orcpt: None,
            state: RcptState::Queued,
            last_reason: None,
            status: None,
        };
        let tls = (
            "TLSv1.3".to_string(),
            "TLS13_AES_128_GCM_SHA256".to_string(),
        );
        let h = received_header(
            "mta (evil);",
            &peer,
            "relay.example",
            "ID1",
            "ESMTPS",
            Some(&tls),
            &[rcpt],
        );
        assert!(h.starts_with("Received: from mta__evil__ ([192.0.2.7])\r\n\tby relay.example (tlsrelay) with ESMTPS id ID1\r\n\t(version=TLSv1.3 cipher=TLS13_AES_128_GCM_SHA256)\r\n\tfor <x@example.net>;\r\n\t"), "{h}");
        assert!(h.ends_with("\r\n"));
    }

    #[test]
    fn tls_required_header() {
        let cases: &[(&[u8], bool)] = &[
            (b"Subject: x\r\nTLS-Required: No\r\n\r\nbody", true),
            (b"tls-required:   no  \r\n\r\n", true),
            (b"TLS-Required: Yes\r\n\r\n", false),
            (b"Subject: x\r\n\r\nTLS-Required: No\r\n", false),
        ];
        for (msg, want) in cases {
            assert_eq!(
                has_tls_required_no(msg),
                *want,
                "{}",
                String::from_utf8_lossy(msg)
            );
        }
    }

    #[test]
    fn received_counting_stops_at_body() {
        let msg = b"Received: a\r\nreceived: b\r\nSubject: x\r\n\r\nReceived: in body\r\n";
        assert_eq!(count_received(msg), 2);
    }
}
