//! `shardmq passwd`: creates and updates password files like `mosquitto_passwd`.
//!
//! ```text
//! shardmq passwd [-H HASH] [-c] FILE USER          # prompts for the password twice
//! shardmq passwd [-H HASH] [-c] -b FILE USER PASS  # batch: the password on the command line
//! shardmq passwd -D FILE USER                      # deletes USER
//! ```
//! `-c` creates the file (replacing an existing one). Entries are written as `$7$`
//! (PBKDF2-SHA512, 101 iterations, 12-byte random salt: what `mosquitto_passwd` 2.0 writes) by
//! default, which is also `mosquitto_passwd` 2.1's default hash type (2.1 uses 1000 iterations
//! and a 64-byte salt, which 2.0 cannot read; ours is readable by both). `-H argon2id` writes
//! `$argon2id$` entries with Mosquitto 2.1's parameters (m=47104 KiB, t=1, p=1, 64-byte random
//! salt), readable by Mosquitto 2.1 built with argon2 and by shardmq. The
//! file is written to a temporary file in the same directory (mode 0600), synced and renamed
//! over the old one, so a reader (the broker on SIGHUP) never sees half a file.

use std::io::{BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::password::{random_argon2_salt, random_salt, PasswordFile, DEFAULT_ITERATIONS};
use crate::config::{PasswdArgs, PasswdHash};

/// Runs `shardmq passwd`; `Err` is the message for stderr.
pub fn run(args: &PasswdArgs) -> Result<(), String> {
    if args.delete {
        if args.password.is_some() {
            return Err("-D takes FILE USER only".into());
        }
        let mut file = load(&args.file)?;
        if !file.remove(&args.username) {
            return Err(format!(
                "user {} not found in {}",
                args.username,
                args.file.display()
            ));
        }
        return write_atomically(&args.file, &file.to_text());
    }
    let password = match (&args.password, args.batch) {
        (Some(password), true) => password.clone(),
        (None, true) => return Err("-b needs FILE USER PASSWORD".into()),
        (Some(_), false) => {
            return Err("a password on the command line needs -b (batch mode)".into())
        }
        (None, false) => prompt_twice()?,
    };
    let mut file = if args.create {
        PasswordFile::default()
    } else {
        load(&args.file)?
    };
    let random = |e: std::io::Error| format!("cannot read random bytes: {e}");
    match args.hash {
        PasswdHash::Sha512Pbkdf2 => file.set(
            &args.username,
            password.as_bytes(),
            DEFAULT_ITERATIONS,
            random_salt().map_err(random)?,
        ),
        PasswdHash::Argon2id => file.set_argon2id(
            &args.username,
            password.as_bytes(),
            random_argon2_salt().map_err(random)?,
        ),
    }
    .map_err(|e| e.to_string())?;
    write_atomically(&args.file, &file.to_text())
}

fn load(path: &Path) -> Result<PasswordFile, String> {
    PasswordFile::load(path).map_err(|e| match &e {
        super::password::PasswordFileError::Io { source, .. }
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            format!("{e} (use -c to create it)")
        }
        _ => e.to_string(),
    })
}

/// Writes `text` to `path` through a temporary file in the same directory (mode 0600), synced,
/// then renamed over `path`.
pub fn write_atomically(path: &Path, text: &str) -> Result<(), String> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| format!("{} is not a file name", path.display()))?;
    let temp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        format!("cannot write {}: {e}", path.display())
    })
}

/// Reads the password twice (without echo on a terminal; from stdin lines otherwise).
fn prompt_twice() -> Result<String, String> {
    let first = read_password("Password: ")?;
    let second = read_password("Reenter password: ")?;
    if first != second {
        return Err("passwords do not match".into());
    }
    if first.is_empty() {
        return Err("empty password".into());
    }
    Ok(first)
}

fn read_password(prompt: &str) -> Result<String, String> {
    let stdin = std::io::stdin();
    // SAFETY: isatty on a valid descriptor.
    let tty = unsafe { libc::isatty(libc::STDIN_FILENO) } == 1;
    let mut saved: Option<libc::termios> = None;
    if tty {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
        // SAFETY: tcgetattr/tcsetattr on stdin with a zeroed termios filled by tcgetattr.
        unsafe {
            let mut term: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut term) == 0 {
                saved = Some(term);
                term.c_lflag &= !libc::ECHO;
                libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &term);
            }
        }
    }
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if let Some(term) = saved {
        // SAFETY: restores the settings read above.
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &term);
        }
        eprintln!();
    }
    match read {
        Ok(0) => Err("no password given (end of input)".into()),
        Ok(_) => Ok(line.trim_end_matches(['\n', '\r']).to_owned()),
        Err(e) => Err(format!("cannot read the password: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::password::Verdict;
    use std::os::unix::fs::PermissionsExt;

    fn args(extra: &[&str]) -> PasswdArgs {
        use clap::Parser;
        let mut argv = vec!["shardmq", "passwd"];
        argv.extend_from_slice(extra);
        match crate::config::Cli::parse_from(argv).into_command() {
            crate::config::Command::Passwd(args) => args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn create_add_replace_delete() {
        let dir = std::env::temp_dir().join(format!("shardmq-passwd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("passwd");
        let file = path.to_str().unwrap();
        // Without -c the file must exist.
        let error = run(&args(&["-b", file, "alice", "one"])).unwrap_err();
        assert!(error.contains("-c"), "{error}");
        run(&args(&["-c", "-b", file, "alice", "one"])).unwrap();
        run(&args(&["-b", file, "bob", "two"])).unwrap();
        run(&args(&["-b", file, "alice", "three"])).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let loaded = PasswordFile::load(&path).unwrap();
        assert_eq!(loaded.usernames().collect::<Vec<_>>(), ["alice", "bob"]);
        assert_eq!(loaded.verify("alice", b"three"), Verdict::Ok);
        assert_eq!(loaded.verify("alice", b"one"), Verdict::WrongPassword);
        assert_eq!(loaded.verify("bob", b"two"), Verdict::Ok);
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("bob:$7$101$"));
        run(&args(&["-D", file, "alice"])).unwrap();
        let loaded = PasswordFile::load(&path).unwrap();
        assert_eq!(loaded.usernames().collect::<Vec<_>>(), ["bob"]);
        assert!(run(&args(&["-D", file, "alice"])).is_err());
        // -H argon2id writes Mosquitto 2.1's argon2id entries; the others stay as they were.
        run(&args(&["-H", "argon2id", "-b", file, "erin", "four"])).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("bob:$7$101$"), "{text}");
        assert!(
            text.contains("erin:$argon2id$v=19$m=47104,t=1,p=1$"),
            "{text}"
        );
        let loaded = PasswordFile::load(&path).unwrap();
        assert_eq!(loaded.verify("erin", b"four"), Verdict::Ok);
        assert_eq!(loaded.verify("erin", b"five"), Verdict::WrongPassword);
        assert_eq!(loaded.verify("bob", b"two"), Verdict::Ok);
        {
            use clap::Parser;
            let bad = ["shardmq", "passwd", "-H", "argon2", "-b", file, "x", "y"];
            assert!(crate::config::Cli::try_parse_from(bad).is_err());
        }
        // -c replaces the file.
        run(&args(&["-c", "-b", file, "carol", "x"])).unwrap();
        let loaded = PasswordFile::load(&path).unwrap();
        assert_eq!(loaded.usernames().collect::<Vec<_>>(), ["carol"]);
        assert!(
            run(&args(&[file, "dave", "pw"])).is_err(),
            "a password needs -b"
        );
        assert!(run(&args(&["-b", file, "bad:name", "pw"])).is_err());
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
