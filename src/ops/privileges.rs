//! Who `serve` runs as. Started as root it must name an unprivileged user
//! (`[server] user`); it binds its listeners as root and switches to that user
//! before it opens any file it writes, so the spool never holds a root-owned file.

use std::ffi::CString;

/// An account from the user database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The user name.
    pub name: String,
    /// Its user id.
    pub uid: u32,
    /// Its primary group id.
    pub gid: u32,
}

/// What `serve` does about its identity, decided before it binds anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Run as the current user.
    Stay,
    /// Bind as root, then become this account.
    SwitchTo(Account),
}

/// Why `serve` will not start as it was asked to, or could not switch user.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PrivilegeError {
    /// Root without `[server] user`.
    #[error("refusing to run as root: set [server] user = \"tlsrelay\" in {config}, or run as an unprivileged user")]
    RootWithoutUser {
        /// The configuration file to edit, or how to give one.
        config: String,
    },
    /// `[server] user` names an account with uid 0.
    #[error("[server] user = \"{0}\" has uid 0, which keeps every privilege; name an unprivileged account such as \"tlsrelay\"")]
    UserIsRoot(String),
    /// `[server] user` names another account, but we are not root and cannot switch.
    #[error("cannot run as user \"{name}\" (uid {uid}): started as uid {current}, and only root can switch users; start as root or as \"{name}\", or remove [server] user")]
    CannotSwitch {
        /// The configured user.
        name: String,
        /// Its uid.
        uid: u32,
        /// Who we are.
        current: u32,
    },
    /// `[server] user` names no account.
    #[error("[server] user = \"{0}\": no such user; create it (e.g. adduser --system {0}) or name an existing one")]
    NoSuchUser(String),
    /// A system call of the switch failed.
    #[error("cannot switch to user \"{name}\": {call} failed: {err}")]
    Switch {
        /// The target user.
        name: String,
        /// The call that failed.
        call: &'static str,
        /// The error it returned.
        err: String,
    },
    /// After the switch, root could still be regained.
    #[error("switched to user \"{0}\" but could regain root; refusing to run")]
    CouldRegainRoot(String),
}

/// The environment variable that lets `serve` run as root without `[server] user`:
/// for test suites and labs that run everything as root, never for production.
pub const ALLOW_ROOT_ENV: &str = "TLSRELAY_ALLOW_ROOT";

/// Decides, from who we are (`euid`) and the configured user, what to do.
/// `allow_root` ([`ALLOW_ROOT_ENV`] = 1) keeps root when no user is set.
/// `config` names the file to edit in the refusal.
pub fn plan(
    euid: u32,
    user: Option<&Account>,
    allow_root: bool,
    config: &str,
) -> Result<Plan, PrivilegeError> {
    match user {
        Some(a) if a.uid == 0 => Err(PrivilegeError::UserIsRoot(a.name.clone())),
        None if euid == 0 && !allow_root => Err(PrivilegeError::RootWithoutUser {
            config: config.to_string(),
        }),
        None => Ok(Plan::Stay),
        Some(a) if a.uid == euid => Ok(Plan::Stay),
        Some(a) if euid == 0 => Ok(Plan::SwitchTo(a.clone())),
        Some(a) => Err(PrivilegeError::CannotSwitch {
            name: a.name.clone(),
            uid: a.uid,
            current: euid,
        }),
    }
}

/// Sets the umask to 077: whatever the caller's umask, every file and directory
/// `serve` creates is private to its user (some modules create theirs with the
/// default mode and rely on the umask).
pub fn private_umask() {
    // SAFETY: umask has no preconditions and cannot fail.
    unsafe { libc::umask(0o077) };
}

/// The effective user id of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Looks `name` up in the user database (/etc/passwd, NSS).
pub fn lookup(name: &str) -> Result<Account, PrivilegeError> {
    let c_name = CString::new(name).map_err(|_| PrivilegeError::NoSuchUser(name.to_string()))?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid value for getpwnam_r to fill in.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; buf outlives pw's strings,
    // which are not used after this function.
    let rc = unsafe {
        libc::getpwnam_r(
            c_name.as_ptr(),
            &mut pw,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        return Err(PrivilegeError::NoSuchUser(name.to_string()));
    }
    Ok(Account {
        name: name.to_string(),
        uid: pw.pw_uid,
        gid: pw.pw_gid,
    })
}

/// Becomes `account` for good: its supplementary groups, gid and uid (real,
/// effective and saved), then checks that root cannot be regained.
/// glibc applies each call to every thread of the process.
pub fn switch_to(account: &Account) -> Result<(), PrivilegeError> {
    let fail = |call: &'static str| PrivilegeError::Switch {
        name: account.name.clone(),
        call,
        err: std::io::Error::last_os_error().to_string(),
    };
    let c_name = CString::new(account.name.as_str())
        .map_err(|_| PrivilegeError::NoSuchUser(account.name.clone()))?;
    // SAFETY: c_name is a valid C string; the ids are plain integers.
    unsafe {
        if libc::initgroups(c_name.as_ptr(), account.gid) != 0 {
            return Err(fail("initgroups"));
        }
        if libc::setresgid(account.gid, account.gid, account.gid) != 0 {
            return Err(fail("setresgid"));
        }
        if libc::setresuid(account.uid, account.uid, account.uid) != 0 {
            return Err(fail("setresuid"));
        }
    }
    verify(account)
}

/// Every uid and gid is the account's, and setuid(0) fails.
fn verify(account: &Account) -> Result<(), PrivilegeError> {
    let (mut r, mut e, mut s) = (0, 0, 0);
    let (mut gr, mut ge, mut gs) = (0, 0, 0);
    // SAFETY: the pointers are valid for the calls; setuid(0) only succeeds if
    // we are still privileged, which is exactly what is checked.
    let regained = unsafe {
        libc::getresuid(&mut r, &mut e, &mut s);
        libc::getresgid(&mut gr, &mut ge, &mut gs);
        libc::setuid(0) == 0 || libc::setgid(0) == 0
    };
    let ids_ok = [r, e, s].iter().all(|&u| u == account.uid)
        && [gr, ge, gs].iter().all(|&g| g == account.gid);
    if regained || !ids_ok {
        return Err(PrivilegeError::CouldRegainRoot(account.name.clone()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(name: &str, uid: u32) -> Account {
        Account {
            name: name.to_string(),
            uid,
            gid: uid,
        }
    }

    #[test]
    fn plans() {
        let relay = account("tlsrelay", 999);
        let toor = account("toor", 0);
        type Case<'a> = (u32, Option<&'a Account>, bool, Result<Plan, &'a str>);
        let cases: Vec<Case> = vec![
            (0, None, false, Err("refusing to run as root: set [server] user = \"tlsrelay\" in /etc/x.toml, or run as an unprivileged user")),
            (0, None, true, Ok(Plan::Stay)),
            (0, Some(&relay), false, Ok(Plan::SwitchTo(relay.clone()))),
            (0, Some(&relay), true, Ok(Plan::SwitchTo(relay.clone()))),
            (0, Some(&toor), true, Err("[server] user = \"toor\" has uid 0, which keeps every privilege; name an unprivileged account such as \"tlsrelay\"")),
            (999, None, false, Ok(Plan::Stay)),
            (999, Some(&relay), false, Ok(Plan::Stay)),
            (1000, Some(&toor), false, Err("[server] user = \"toor\" has uid 0, which keeps every privilege; name an unprivileged account such as \"tlsrelay\"")),
            (1000, Some(&relay), true, Err("cannot run as user \"tlsrelay\" (uid 999): started as uid 1000, and only root can switch users; start as root or as \"tlsrelay\", or remove [server] user")),
        ];
        for (euid, user, allow_root, want) in cases {
            let got = plan(euid, user, allow_root, "/etc/x.toml").map_err(|e| e.to_string());
            assert_eq!(
                got,
                want.map_err(str::to_string),
                "euid {euid}, user {user:?}"
            );
        }
    }

    #[test]
    fn lookup_finds_root_and_not_a_missing_user() {
        assert_eq!(lookup("root").unwrap().uid, 0);
        assert_eq!(
            lookup("no-such-user-tlsrelay").unwrap_err().to_string(),
            "[server] user = \"no-such-user-tlsrelay\": no such user; create it (e.g. adduser --system no-such-user-tlsrelay) or name an existing one"
        );
    }
}
