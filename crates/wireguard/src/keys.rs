//! A node's static WireGuard key pair, kept in a file of the agent's state dir.
//!
//! The private key is generated once and then read back on every start, so a node keeps its
//! identity towards its peers across restarts (issue 13: "generated once and kept in the state
//! dir with mode 0600"). The file holds the key the way `wg genkey` prints it: the 32 clamped
//! bytes in standard base64 and a newline, so `wg pubkey < file` and other WireGuard tools read
//! it as is. The public key in the same form is what goes into the Node's `WireguardPubKey`, as
//! Cilium publishes it.
//!
//! The file is written atomically: a temporary file beside it, created with mode 0600 from the
//! start (the key is never readable by others, not even for a moment), synced, then renamed
//! into place without replacing an existing file, so two agents starting at once end up with one
//! key. A file readable or writable by group or others is refused rather than used or
//! silently fixed: the key may have leaked, and an operator should look.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use boringtun::x25519::{PublicKey, StaticSecret};
use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
use rand::TryRngCore;
use rand::rngs::OsRng;

/// Length of an X25519 key in bytes.
pub const KEY_LEN: usize = 32;

/// The permission bits a key file may have: owner read/write only.
const KEY_FILE_MODE: u32 = 0o600;

/// A key file is about 45 bytes; more than this is not a key, and reading stops there.
const MAX_KEY_FILE_LEN: u64 = 256;

/// Why a node key could not be loaded or created. Every variant names the key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading, writing or renaming the key file (or its temporary file) failed.
    #[error("wireguard key file {path}: {op}: {source}")]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The underlying error.
        source: io::Error,
    },
    /// The key file is readable or writable by group or others (or is not a regular file).
    #[error(
        "wireguard key file {path}: mode {mode:04o} lets others read it; expected a regular file with mode 0600 (the key may have leaked: replace it, or chmod 600 if it did not)"
    )]
    Permissions {
        /// The file at fault.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file's content is not one base64-encoded 32-byte key.
    #[error("wireguard key file {path}: {reason}")]
    Malformed {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with the content.
        reason: String,
    },
    /// The operating system's random source failed while generating a key.
    #[error("wireguard key file {path}: generating a key from the OS random source: {source}")]
    Random {
        /// The file the key was for.
        path: PathBuf,
        /// The underlying error.
        source: rand::rand_core::OsError,
    },
}

/// A node's static X25519 key pair.
///
/// `Debug` shows only the public key; the private key is zeroed when dropped (x25519-dalek's
/// `StaticSecret`).
#[derive(Clone)]
pub struct NodeKey {
    secret: StaticSecret,
    public: PublicKey,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKey")
            .field("public", &self.public_base64())
            .finish_non_exhaustive()
    }
}

impl NodeKey {
    /// Loads the key pair from `path`, or, when no file exists there, generates a private key
    /// from the OS random source and writes it to `path` (mode 0600, atomically) first.
    ///
    /// Refuses a file that group or others may read or write, and one whose content is not a
    /// base64-encoded 32-byte key, naming the file.
    pub fn load_or_create(path: &Path) -> Result<NodeKey, KeyError> {
        match Self::load(path) {
            Err(KeyError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            other => return other,
        }
        let key = NodeKey::generate(path)?;
        match write_new(path, &key.private_base64(), false) {
            Ok(()) => Ok(key),
            // Another process created the file between our look and our rename: use its key,
            // so both agree on the node's identity.
            Err(KeyError::Io { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists => {
                Self::load(path)
            }
            Err(e) => Err(e),
        }
    }

    /// Replaces the key at `path` by a newly generated one (key rotation), atomically: a
    /// temporary file with mode 0600 renamed over the old file, so a reader sees either the old
    /// key or the new one, never a partial file, and a crash leaves one of the two. Creates the
    /// file if there is none. The caller then hands the new private key to the device (UAPI
    /// `set private_key`) and publishes the new public key.
    pub fn rotate(path: &Path) -> Result<NodeKey, KeyError> {
        let key = NodeKey::generate(path)?;
        write_new(path, &key.private_base64(), true)?;
        Ok(key)
    }

    /// A new clamped key pair from the OS random source; `path` only names the key in errors.
    fn generate(path: &Path) -> Result<NodeKey, KeyError> {
        let mut bytes = [0u8; KEY_LEN];
        OsRng
            .try_fill_bytes(&mut bytes)
            .map_err(|source| KeyError::Random {
                path: path.to_owned(),
                source,
            })?;
        Ok(NodeKey::from_private_bytes(clamp(bytes)))
    }

    /// Loads the key pair from an existing file at `path`, with the checks of
    /// [`NodeKey::load_or_create`].
    pub fn load(path: &Path) -> Result<NodeKey, KeyError> {
        let io_err = |op| {
            move |source| KeyError::Io {
                path: path.to_owned(),
                op,
                source,
            }
        };
        let file = File::open(path).map_err(io_err("open"))?;
        // Checked on the open file, not the path, so what is checked is what is read.
        let meta = file.metadata().map_err(io_err("stat"))?;
        let mode = meta.mode() & 0o7777;
        if !meta.is_file() || mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
        let mut text = String::new();
        file.take(MAX_KEY_FILE_LEN)
            .read_to_string(&mut text)
            .map_err(|e| {
                if e.kind() == io::ErrorKind::InvalidData {
                    KeyError::Malformed {
                        path: path.to_owned(),
                        reason: "not text (expected one base64 key, as `wg genkey` prints)".into(),
                    }
                } else {
                    io_err("read")(e)
                }
            })?;
        Self::from_private_base64(text.trim_end_matches(['\n', '\r'])).map_err(|reason| {
            KeyError::Malformed {
                path: path.to_owned(),
                reason,
            }
        })
    }

    /// The key pair of a private key in `wg genkey`'s form (standard base64 of 32 bytes, no
    /// surrounding whitespace). The error says what is wrong, without the key.
    pub fn from_private_base64(text: &str) -> Result<NodeKey, String> {
        let bytes = STANDARD
            .decode(text)
            .map_err(|e| format!("not base64 ({e}); expected one key, as `wg genkey` prints"))?;
        let bytes: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| {
            format!(
                "key is {} bytes after base64 decoding, expected {KEY_LEN}",
                bytes.len()
            )
        })?;
        Ok(NodeKey::from_private_bytes(bytes))
    }

    /// The key pair of a raw private key. X25519 clamps the scalar when it is used, so an
    /// unclamped key gives the same public key as its clamped form (as in `wg pubkey`).
    pub fn from_private_bytes(bytes: [u8; KEY_LEN]) -> NodeKey {
        let secret = StaticSecret::from(bytes);
        let public = PublicKey::from(&secret);
        NodeKey { secret, public }
    }

    /// The private key, for the WireGuard core (`Tunn::new` takes it by value).
    pub fn secret(&self) -> &StaticSecret {
        &self.secret
    }

    /// The public key.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// The public key in standard base64, as `wg pubkey` prints it and as Cilium puts it in
    /// the Node's `WireguardPubKey`.
    pub fn public_base64(&self) -> String {
        STANDARD.encode(self.public.as_bytes())
    }

    /// The public key as a UAPI [`Key`](crate::uapi::Key) (base64 in `Display`).
    pub fn public_key(&self) -> crate::uapi::Key {
        crate::uapi::Key(self.public.to_bytes())
    }

    /// The private key as a UAPI [`Key`](crate::uapi::Key), for `set private_key` on the
    /// device. Keep it out of logs (its `Display` prints the secret).
    pub fn private_key(&self) -> crate::uapi::Key {
        crate::uapi::Key(self.secret.to_bytes())
    }

    /// The private key in `wg genkey`'s form. Only for writing the key file.
    fn private_base64(&self) -> String {
        STANDARD.encode(self.secret.to_bytes())
    }
}

/// Curve25519 clamping, as `wg genkey` applies it before printing a key.
fn clamp(mut bytes: [u8; KEY_LEN]) -> [u8; KEY_LEN] {
    bytes[0] &= 248;
    bytes[31] &= 127;
    bytes[31] |= 64;
    bytes
}

/// Writes `base64` and a newline to a file at `path`: a temporary file beside it created
/// with mode 0600, synced, renamed into place, and the directory synced so the rename survives
/// a crash. Without `replace`, only if `path` still does not exist (`RENAME_NOREPLACE`;
/// `AlreadyExists` otherwise); with it, over the old file (rotation).
fn write_new(path: &Path, base64: &str, replace: bool) -> Result<(), KeyError> {
    let err = |p: &Path, op| {
        let p = p.to_owned();
        move |source| KeyError::Io {
            path: p,
            op,
            source,
        }
    };
    let name = path.file_name().ok_or_else(|| KeyError::Io {
        path: path.to_owned(),
        op: "name",
        source: io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"),
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    // A temporary file left by a crashed run of this same pid is stale.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(err(&tmp, "remove stale")(e)),
        _ => {}
    }
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(KEY_FILE_MODE)
            .open(&tmp)
            .map_err(err(&tmp, "create"))?;
        // The umask cannot widen 0600, but a narrower umask or an odd filesystem could leave
        // other bits: set them exactly.
        file.set_permissions(fs::Permissions::from_mode(KEY_FILE_MODE))
            .map_err(err(&tmp, "chmod"))?;
        file.write_all(format!("{base64}\n").as_bytes())
            .map_err(err(&tmp, "write"))?;
        file.sync_all().map_err(err(&tmp, "sync"))?;
        renameat2(
            AT_FDCWD,
            &tmp,
            AT_FDCWD,
            path,
            if replace {
                RenameFlags::empty()
            } else {
                RenameFlags::RENAME_NOREPLACE
            },
        )
        .map_err(|e| io::Error::from_raw_os_error(e as i32))
        .map_err(err(path, "rename into place"))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err(dir, "sync directory"))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;
    use std::process::{Command, Stdio};

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn creates_once_with_mode_0600_and_reloads_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wireguard.key");
        let created = NodeKey::load_or_create(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{}\n", created.private_base64()));
        // No temporary file is left beside it.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("wireguard.key")]);

        let again = NodeKey::load_or_create(&path).unwrap();
        assert_eq!(again.secret().to_bytes(), created.secret().to_bytes());
        assert_eq!(again.public_base64(), created.public_base64());
        assert_eq!(fs::read_to_string(&path).unwrap(), text, "file rewritten");

        // A second node's key is a different one.
        let other = NodeKey::load_or_create(&dir.path().join("other.key")).unwrap();
        assert_ne!(other.public_base64(), created.public_base64());
    }

    #[test]
    fn rotate_replaces_the_key_atomically_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plexus_wg0.key");
        let old = NodeKey::load_or_create(&path).unwrap();
        let new = NodeKey::rotate(&path).unwrap();
        assert_ne!(new.public_key(), old.public_key());
        assert_eq!(mode(&path), 0o600);
        let reloaded = NodeKey::load(&path).unwrap();
        assert_eq!(reloaded.public_key(), new.public_key());
        assert_eq!(reloaded.private_key(), new.private_key());
        assert_eq!(new.public_key().to_string(), new.public_base64());
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("plexus_wg0.key")]);
        // Rotating where no key exists yet creates one.
        let fresh = dir.path().join("fresh.key");
        let k = NodeKey::rotate(&fresh).unwrap();
        assert_eq!(NodeKey::load(&fresh).unwrap().public_key(), k.public_key());
        // A missing directory is an error naming it.
        let err = NodeKey::rotate(&dir.path().join("nodir").join("k")).unwrap_err();
        assert!(err.to_string().contains("nodir"), "{err}");
    }

    #[test]
    fn generated_key_is_clamped_like_wg_genkey() {
        let dir = tempfile::tempdir().unwrap();
        let key = NodeKey::load_or_create(&dir.path().join("k")).unwrap();
        let b = key.secret().to_bytes();
        assert_eq!(b[0] & 7, 0);
        assert_eq!(b[31] & 0xc0, 0x40);
    }

    #[test]
    fn malformed_content_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&str, &[u8], &str); 4] = [
            ("notbase64.key", b"this is not base64!\n", "not base64"),
            // 31 bytes.
            (
                "short.key",
                b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==\n",
                "31 bytes",
            ),
            ("empty.key", b"", "0 bytes"),
            ("binary.key", &[0xff, 0xfe, 0x00, 0x80], "not text"),
        ];
        for (name, content, expected) in cases {
            let path = dir.path().join(name);
            fs::write(&path, content).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            let err = NodeKey::load_or_create(&path).unwrap_err();
            assert!(matches!(err, KeyError::Malformed { .. }), "{name}: {err:?}");
            let msg = err.to_string();
            assert!(msg.contains(path.to_str().unwrap()), "{msg}");
            assert!(msg.contains(expected), "{name}: {msg}");
            // The bad file is left for the operator, not replaced by a new key.
            assert_eq!(fs::read(&path).unwrap(), content);
        }
    }

    #[test]
    fn group_or_world_accessible_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wireguard.key");
        let key = NodeKey::load_or_create(&path).unwrap();
        for bad in [0o644, 0o640, 0o604, 0o620, 0o666] {
            fs::set_permissions(&path, fs::Permissions::from_mode(bad)).unwrap();
            let err = NodeKey::load_or_create(&path).unwrap_err();
            match &err {
                KeyError::Permissions { path: p, mode } => {
                    assert_eq!(p, &path);
                    assert_eq!(*mode, bad);
                }
                other => panic!("{bad:o}: {other:?}"),
            }
            assert!(err.to_string().contains(path.to_str().unwrap()));
            assert_eq!(mode(&path), bad, "the file was changed");
        }
        // Owner-only modes narrower than 0600 are fine.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        let again = NodeKey::load_or_create(&path).unwrap();
        assert_eq!(again.public_base64(), key.public_base64());
    }

    #[test]
    fn unwritable_directory_error_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("wireguard.key");
        let err = NodeKey::load_or_create(&path).unwrap_err();
        assert!(matches!(err, KeyError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("missing-dir"), "{err}");
    }

    fn wg(args: &[&str], stdin: &str) -> String {
        let mut child = Command::new("wg")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("wg from wireguard-tools (scripts/setup.sh installs it)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "wg {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn public_key_matches_wg_pubkey() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wireguard.key");
        let key = NodeKey::load_or_create(&path).unwrap();
        // Our file is what `wg pubkey` reads.
        let file = fs::read_to_string(&path).unwrap();
        assert_eq!(wg(&["pubkey"], &file).trim_end(), key.public_base64());

        // And a key from `wg genkey` loads, with the same public key as wg computes.
        let genkey = wg(&["genkey"], "");
        let theirs = dir.path().join("from-wg.key");
        fs::write(&theirs, &genkey).unwrap();
        fs::set_permissions(&theirs, fs::Permissions::from_mode(0o600)).unwrap();
        let loaded = NodeKey::load_or_create(&theirs).unwrap();
        assert_eq!(wg(&["pubkey"], &genkey).trim_end(), loaded.public_base64());
    }
}
