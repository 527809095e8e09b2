//! A small read-only reader of BoltDB (bbolt) files, enough to look keys up in nested buckets.
//!
//! The file format (bbolt 1.3, file format version 2), as this reader relies on it:
//! - the file is a sequence of pages of one size; every page starts with a 16-byte header
//!   (`id` u64, `flags` u16, `count` u16, `overflow` u32, little-endian on the machines podman
//!   runs on) and spans `overflow + 1` page sizes;
//! - pages 0 and 1 are meta pages (flag 0x04): magic `0xED0CDAED`, version 2, page size, the
//!   root bucket's page, the high-water page id, the transaction id and an FNV-1a 64 checksum
//!   of the fields before it. A writer commits by writing the meta page of its transaction
//!   last, so the valid meta with the highest transaction id names a consistent tree;
//! - branch pages (0x01) hold `count` elements (`pos` u32, `ksize` u32, `pgid` u64) pointing at
//!   children whose keys are >= the element's key; leaf pages (0x02) hold elements (`flags`
//!   u32, `pos` u32, `ksize` u32, `vsize` u32); `pos` counts from the element itself;
//! - a leaf value with flag 0x01 is a nested bucket: a 16-byte header (`root` u64, `sequence`
//!   u64), and when `root` is 0 an inline bucket whose one leaf page follows the header.
//!
//! Writers hold an exclusive `flock` on the file for as long as they have it open, so
//! [`Snapshot::open`] takes a shared one (waiting at most a given time) and keeps it while the
//! snapshot lives: every page read under it belongs to the same committed transaction.
//! Every malformed structure is an error naming the file, never a panic.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// bbolt's magic number.
pub const MAGIC: u32 = 0xED0C_DAED;
/// The file format version this reader understands.
pub const VERSION: u32 = 2;

const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const META_SIZE: usize = 64;
/// Bytes of the meta page covered by its checksum (everything before the checksum field).
const META_CHECKSUMMED: usize = 56;
const BRANCH_PAGE: u16 = 0x01;
const LEAF_PAGE: u16 = 0x02;
const META_PAGE: u16 = 0x04;
const BUCKET_LEAF: u32 = 0x01;
const BUCKET_HEADER: usize = 16;
/// A tree deeper than this is taken for a cycle in a corrupt file.
const MAX_DEPTH: usize = 64;
/// How often a held lock is retried (bbolt itself retries every 50 ms).
const LOCK_RETRY: Duration = Duration::from_millis(10);

/// A failure reading a bolt file; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum BoltError {
    /// The file cannot be opened (missing, no permission).
    #[error("cannot open {}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A writer kept its exclusive lock longer than we wait.
    #[error("{} is locked by another process (no shared lock within {timeout:?})", path.display())]
    Locked {
        /// The file.
        path: PathBuf,
        /// How long we waited.
        timeout: Duration,
    },
    /// Reading failed.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a bolt database (too short, bad magic or version, bad checksums).
    #[error("{} is not a bolt database: {reason}", path.display())]
    NotBolt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file is a bolt database whose tree is damaged.
    #[error("{} is corrupt: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The fields of a meta page this reader uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Meta {
    page_size: u32,
    root: u64,
    high_water: u64,
    txid: u64,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// FNV-1a, 64 bits: bbolt's meta checksum.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Parses the meta at the start of `m` (the bytes after a page header), or says what is wrong.
fn parse_meta(m: &[u8]) -> Result<Meta, String> {
    if m.len() < META_SIZE {
        return Err("meta page is truncated".into());
    }
    let field = |at| u32_at(m, at).unwrap_or_default();
    let field64 = |at| u64_at(m, at).unwrap_or_default();
    let magic = field(0);
    if magic != MAGIC {
        return Err(format!("bad magic {magic:#010x} (expected {MAGIC:#010x})"));
    }
    let version = field(4);
    if version != VERSION {
        return Err(format!(
            "file format version {version} (this reader knows {VERSION})"
        ));
    }
    let checksum = field64(META_CHECKSUMMED);
    let computed = fnv1a64(&m[..META_CHECKSUMMED]);
    if checksum != computed {
        return Err(format!(
            "meta checksum {checksum:#018x} does not match its contents ({computed:#018x})"
        ));
    }
    let page_size = field(8);
    if !(512..=1 << 20).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(format!("page size {page_size} is not plausible"));
    }
    Ok(Meta {
        page_size,
        root: field64(16),
        high_water: field64(40),
        txid: field64(48),
    })
}

/// A nested bucket: its root page, or (inline) its one leaf page's bytes.
#[derive(Clone, Debug)]
pub struct Bucket {
    root: BucketRoot,
}

#[derive(Clone, Debug)]
enum BucketRoot {
    Page(u64),
    Inline(Vec<u8>),
}

/// A key's value in a bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A plain value.
    Value(Vec<u8>),
    /// A nested bucket (its raw header and inline page, if any).
    Bucket(Vec<u8>),
}

/// One consistent, read-only view of a bolt file, under a shared lock held until it is dropped.
#[derive(Debug)]
pub struct Snapshot {
    path: PathBuf,
    file: Flock<File>,
    meta: Meta,
    file_len: u64,
}

impl Snapshot {
    /// Opens `path`, takes a shared `flock` (waiting up to `lock_timeout` for a writer to let
    /// go) and reads its newest valid meta page.
    pub fn open(path: &Path, lock_timeout: Duration) -> Result<Self, BoltError> {
        let open = || {
            File::open(path).map_err(|source| BoltError::Open {
                path: path.to_path_buf(),
                source,
            })
        };
        let start = Instant::now();
        let mut file = open()?;
        let file = loop {
            match Flock::lock(file, FlockArg::LockSharedNonblock) {
                Ok(locked) => break locked,
                Err((back, Errno::EWOULDBLOCK)) => {
                    if start.elapsed() >= lock_timeout {
                        return Err(BoltError::Locked {
                            path: path.to_path_buf(),
                            timeout: lock_timeout,
                        });
                    }
                    file = back;
                    std::thread::sleep(LOCK_RETRY);
                }
                Err((_, Errno::EINTR)) => file = open()?,
                Err((_, errno)) => {
                    return Err(BoltError::Io {
                        path: path.to_path_buf(),
                        source: std::io::Error::from(errno),
                    });
                }
            }
        };
        let file_len = file
            .metadata()
            .map_err(|source| BoltError::Io {
                path: path.to_path_buf(),
                source,
            })?
            .len();
        let mut snap = Self {
            path: path.to_path_buf(),
            file,
            meta: Meta {
                page_size: 0,
                root: 0,
                high_water: 0,
                txid: 0,
            },
            file_len,
        };
        snap.meta = snap.read_meta()?;
        Ok(snap)
    }

    /// The transaction id of the snapshot.
    pub fn txid(&self) -> u64 {
        self.meta.txid
    }

    /// The file's page size.
    pub fn page_size(&self) -> u32 {
        self.meta.page_size
    }

    fn not_bolt(&self, reason: impl Into<String>) -> BoltError {
        BoltError::NotBolt {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    fn corrupt(&self, reason: impl Into<String>) -> BoltError {
        BoltError::Corrupt {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, BoltError> {
        let mut buf = vec![0u8; len];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|source| BoltError::Io {
                path: self.path.clone(),
                source,
            })?;
        Ok(buf)
    }

    /// Meta page 0 gives the page size; meta page 1 follows it. When meta 0 is damaged, meta 1
    /// is looked for at the usual page sizes (bbolt falls back to the OS page size).
    fn read_meta(&self) -> Result<Meta, BoltError> {
        if self.file_len < (PAGE_HEADER + META_SIZE) as u64 {
            return Err(self.not_bolt(format!(
                "the file is truncated ({} bytes, shorter than a meta page)",
                self.file_len
            )));
        }
        let meta_at = |offset: u64| -> Result<Result<Meta, String>, BoltError> {
            if offset + (PAGE_HEADER + META_SIZE) as u64 > self.file_len {
                return Ok(Err(format!(
                    "the file is truncated ({} bytes, no meta page at offset {offset})",
                    self.file_len
                )));
            }
            let page = self.read_at(offset, PAGE_HEADER + META_SIZE)?;
            let flags = u16_at(&page, 8).unwrap_or_default();
            if flags & META_PAGE == 0 {
                // Checked after the magic so a foreign file is reported by its magic.
                return Ok(parse_meta(&page[PAGE_HEADER..]).and_then(|_| {
                    Err(format!(
                        "page at offset {offset} is not a meta page (flags {flags:#x})"
                    ))
                }));
            }
            Ok(parse_meta(&page[PAGE_HEADER..]))
        };
        let meta0 = meta_at(0)?;
        let meta1 = match &meta0 {
            Ok(m) => meta_at(u64::from(m.page_size))?,
            Err(_) => {
                let mut found = Err("no valid meta page".to_string());
                for size in [4096u64, 8192, 16384, 65536] {
                    found = meta_at(size)?;
                    if found.is_ok() {
                        break;
                    }
                }
                found
            }
        };
        let meta = match (meta0, meta1) {
            (Ok(a), Ok(b)) => {
                if a.txid >= b.txid {
                    a
                } else {
                    b
                }
            }
            (Ok(a), Err(_)) => a,
            (Err(_), Ok(b)) => b,
            (Err(e0), Err(e1)) => {
                return Err(self.not_bolt(if e0 == e1 {
                    e0
                } else {
                    format!("meta page 0: {e0}; meta page 1: {e1}")
                }));
            }
        };
        let needed = u64::from(meta.page_size) * meta.high_water;
        if needed > self.file_len {
            return Err(self.corrupt(format!(
                "the file is truncated ({} bytes, its meta page counts {} pages of {} bytes)",
                self.file_len, meta.high_water, meta.page_size
            )));
        }
        Ok(meta)
    }

    /// Reads page `id` with its overflow pages.
    fn page(&self, id: u64) -> Result<Vec<u8>, BoltError> {
        if id < 2 || id >= self.meta.high_water {
            return Err(self.corrupt(format!(
                "page id {id} is outside the tree (pages 2..{})",
                self.meta.high_water
            )));
        }
        let ps = u64::from(self.meta.page_size);
        let header = self.read_at(id * ps, PAGE_HEADER)?;
        let stored = u64_at(&header, 0).unwrap_or_default();
        if stored != id {
            return Err(self.corrupt(format!("page {id} says it is page {stored}")));
        }
        let overflow = u64::from(u32_at(&header, 12).unwrap_or_default());
        if id + overflow >= self.meta.high_water {
            return Err(self.corrupt(format!(
                "page {id} overflows by {overflow} pages past the end of the tree"
            )));
        }
        let len = usize::try_from((overflow + 1) * ps)
            .map_err(|_| self.corrupt(format!("page {id} is too large")))?;
        self.read_at(id * ps, len)
    }

    /// The root bucket (the top-level one holding named buckets).
    pub fn root(&self) -> Bucket {
        Bucket {
            root: BucketRoot::Page(self.meta.root),
        }
    }

    /// The entry under `key` in `bucket`, if any.
    pub fn get(&self, bucket: &Bucket, key: &[u8]) -> Result<Option<Entry>, BoltError> {
        match &bucket.root {
            BucketRoot::Inline(page) => self.leaf_get(page, "an inline bucket", key),
            BucketRoot::Page(id) => {
                let mut id = *id;
                for _ in 0..MAX_DEPTH {
                    let page = self.page(id)?;
                    let flags = u16_at(&page, 8).unwrap_or_default();
                    if flags & LEAF_PAGE != 0 {
                        return self.leaf_get(&page, &format!("page {id}"), key);
                    }
                    if flags & BRANCH_PAGE == 0 {
                        return Err(self.corrupt(format!(
                            "page {id} is neither a branch nor a leaf (flags {flags:#x})"
                        )));
                    }
                    match self.branch_child(&page, id, key)? {
                        Some(child) => id = child,
                        None => return Ok(None),
                    }
                }
                Err(self.corrupt(format!(
                    "the tree under page {} is deeper than {MAX_DEPTH} levels (a cycle?)",
                    match bucket.root {
                        BucketRoot::Page(p) => p,
                        BucketRoot::Inline(_) => 0,
                    }
                )))
            }
        }
    }

    /// The nested bucket under `key`; `None` when absent, an error when `key` holds a value.
    pub fn bucket(&self, parent: &Bucket, key: &[u8]) -> Result<Option<Bucket>, BoltError> {
        match self.get(parent, key)? {
            None => Ok(None),
            Some(Entry::Value(_)) => Err(self.corrupt(format!(
                "key {:?} holds a value where a bucket was expected",
                String::from_utf8_lossy(key)
            ))),
            Some(Entry::Bucket(raw)) => {
                let root = u64_at(&raw, 0).ok_or_else(|| {
                    self.corrupt(format!(
                        "bucket {:?} has a truncated header",
                        String::from_utf8_lossy(key)
                    ))
                })?;
                if root == 0 {
                    Ok(Some(Bucket {
                        root: BucketRoot::Inline(raw[BUCKET_HEADER.min(raw.len())..].to_vec()),
                    }))
                } else {
                    Ok(Some(Bucket {
                        root: BucketRoot::Page(root),
                    }))
                }
            }
        }
    }

    /// The plain value under `key`; `None` when absent, an error when `key` is a bucket.
    pub fn value(&self, bucket: &Bucket, key: &[u8]) -> Result<Option<Vec<u8>>, BoltError> {
        match self.get(bucket, key)? {
            None => Ok(None),
            Some(Entry::Value(v)) => Ok(Some(v)),
            Some(Entry::Bucket(_)) => Err(self.corrupt(format!(
                "key {:?} holds a bucket where a value was expected",
                String::from_utf8_lossy(key)
            ))),
        }
    }

    /// Element `i`'s slice of `len` bytes at `pos` from the element's own offset.
    fn element_bytes<'a>(
        &self,
        page: &'a [u8],
        what: &str,
        elem: usize,
        pos: u32,
        len: usize,
    ) -> Result<&'a [u8], BoltError> {
        let start = elem + pos as usize;
        page.get(start..start + len).ok_or_else(|| {
            self.corrupt(format!(
                "{what}: an element points past the page end ({start}+{len} > {})",
                page.len()
            ))
        })
    }

    fn count(&self, page: &[u8], what: &str) -> Result<usize, BoltError> {
        let count = usize::from(u16_at(page, 10).unwrap_or_default());
        if PAGE_HEADER + count * ELEMENT > page.len() {
            return Err(self.corrupt(format!(
                "{what}: {count} elements do not fit in {} bytes",
                page.len()
            )));
        }
        Ok(count)
    }

    /// Which child of a branch page may hold `key`: the last element whose key is <= `key`.
    fn branch_child(&self, page: &[u8], id: u64, key: &[u8]) -> Result<Option<u64>, BoltError> {
        let what = format!("branch page {id}");
        let count = self.count(page, &what)?;
        let mut child = None;
        for i in 0..count {
            let elem = PAGE_HEADER + i * ELEMENT;
            let pos = u32_at(page, elem).unwrap_or_default();
            let ksize = u32_at(page, elem + 4).unwrap_or_default() as usize;
            let pgid = u64_at(page, elem + 8).unwrap_or_default();
            let k = self.element_bytes(page, &what, elem, pos, ksize)?;
            if k > key {
                break;
            }
            child = Some(pgid);
        }
        // A key before the first element is in the first child (bbolt's search lands there).
        if child.is_none() && count > 0 {
            child = u64_at(page, PAGE_HEADER + 8);
        }
        Ok(child)
    }

    fn leaf_get(&self, page: &[u8], what: &str, key: &[u8]) -> Result<Option<Entry>, BoltError> {
        if page.len() < PAGE_HEADER {
            return Err(self.corrupt(format!("{what}: truncated page header")));
        }
        let flags = u16_at(page, 8).unwrap_or_default();
        if flags & LEAF_PAGE == 0 {
            return Err(self.corrupt(format!("{what} is not a leaf page (flags {flags:#x})")));
        }
        let count = self.count(page, what)?;
        for i in 0..count {
            let elem = PAGE_HEADER + i * ELEMENT;
            let eflags = u32_at(page, elem).unwrap_or_default();
            let pos = u32_at(page, elem + 4).unwrap_or_default();
            let ksize = u32_at(page, elem + 8).unwrap_or_default() as usize;
            let vsize = u32_at(page, elem + 12).unwrap_or_default() as usize;
            let kv = self.element_bytes(page, what, elem, pos, ksize + vsize)?;
            if &kv[..ksize] == key {
                let v = kv[ksize..].to_vec();
                return Ok(Some(if eflags & BUCKET_LEAF != 0 {
                    Entry::Bucket(v)
                } else {
                    Entry::Value(v)
                }));
            }
        }
        Ok(None)
    }

    /// The keys of `bucket` in order, with whether each is a nested bucket (for listings and
    /// tests; podman's buckets hold few keys).
    pub fn keys(&self, bucket: &Bucket) -> Result<Vec<(Vec<u8>, bool)>, BoltError> {
        let mut out = Vec::new();
        match &bucket.root {
            BucketRoot::Inline(page) => self.leaf_keys(page, "an inline bucket", &mut out)?,
            BucketRoot::Page(id) => self.walk_keys(*id, 0, &mut out)?,
        }
        Ok(out)
    }

    fn walk_keys(
        &self,
        id: u64,
        depth: usize,
        out: &mut Vec<(Vec<u8>, bool)>,
    ) -> Result<(), BoltError> {
        if depth > MAX_DEPTH {
            return Err(self.corrupt(format!(
                "the tree at page {id} is deeper than {MAX_DEPTH} levels (a cycle?)"
            )));
        }
        let page = self.page(id)?;
        let flags = u16_at(&page, 8).unwrap_or_default();
        if flags & LEAF_PAGE != 0 {
            return self.leaf_keys(&page, &format!("page {id}"), out);
        }
        if flags & BRANCH_PAGE == 0 {
            return Err(self.corrupt(format!(
                "page {id} is neither a branch nor a leaf (flags {flags:#x})"
            )));
        }
        let count = self.count(&page, &format!("branch page {id}"))?;
        for i in 0..count {
            let pgid = u64_at(&page, PAGE_HEADER + i * ELEMENT + 8).unwrap_or_default();
            self.walk_keys(pgid, depth + 1, out)?;
        }
        Ok(())
    }

    fn leaf_keys(
        &self,
        page: &[u8],
        what: &str,
        out: &mut Vec<(Vec<u8>, bool)>,
    ) -> Result<(), BoltError> {
        let count = self.count(page, what)?;
        for i in 0..count {
            let elem = PAGE_HEADER + i * ELEMENT;
            let eflags = u32_at(page, elem).unwrap_or_default();
            let pos = u32_at(page, elem + 4).unwrap_or_default();
            let ksize = u32_at(page, elem + 8).unwrap_or_default() as usize;
            let k = self.element_bytes(page, what, elem, pos, ksize)?;
            out.push((k.to_vec(), eflags & BUCKET_LEAF != 0));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a bolt file by hand: meta pages 0 and 1, a root leaf at page 2 holding an inline
    /// bucket `in` (key `k` -> `v`), a bucket `deep` whose root is a branch page 3 over leaves
    /// 4 and 5, and a value `big` on leaf 4 with an overflow page.
    struct Builder {
        ps: usize,
        pages: Vec<u8>,
    }

    fn put_u16(b: &mut [u8], at: usize, v: u16) {
        b[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn put_u32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn put_u64(b: &mut [u8], at: usize, v: u64) {
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// A leaf page body (header + elements + data) for (key, value, is_bucket) entries.
    fn leaf(id: u64, entries: &[(&[u8], &[u8], bool)], len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        put_u64(&mut p, 0, id);
        put_u16(&mut p, 8, LEAF_PAGE);
        put_u16(&mut p, 10, entries.len() as u16);
        let mut data = PAGE_HEADER + entries.len() * ELEMENT;
        for (i, (k, v, bucket)) in entries.iter().enumerate() {
            let elem = PAGE_HEADER + i * ELEMENT;
            put_u32(&mut p, elem, u32::from(*bucket));
            put_u32(&mut p, elem + 4, (data - elem) as u32);
            put_u32(&mut p, elem + 8, k.len() as u32);
            put_u32(&mut p, elem + 12, v.len() as u32);
            p[data..data + k.len()].copy_from_slice(k);
            data += k.len();
            p[data..data + v.len()].copy_from_slice(v);
            data += v.len();
        }
        p
    }

    fn branch(id: u64, children: &[(&[u8], u64)], len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        put_u64(&mut p, 0, id);
        put_u16(&mut p, 8, BRANCH_PAGE);
        put_u16(&mut p, 10, children.len() as u16);
        let mut data = PAGE_HEADER + children.len() * ELEMENT;
        for (i, (k, pgid)) in children.iter().enumerate() {
            let elem = PAGE_HEADER + i * ELEMENT;
            put_u32(&mut p, elem, (data - elem) as u32);
            put_u32(&mut p, elem + 4, k.len() as u32);
            put_u64(&mut p, elem + 8, *pgid);
            p[data..data + k.len()].copy_from_slice(k);
            data += k.len();
        }
        p
    }

    fn bucket_value(root: u64, inline: Option<Vec<u8>>) -> Vec<u8> {
        let mut v = vec![0u8; BUCKET_HEADER];
        put_u64(&mut v, 0, root);
        if let Some(page) = inline {
            v.extend(page);
        }
        v
    }

    impl Builder {
        fn new(ps: usize) -> Self {
            Self {
                ps,
                pages: vec![0u8; ps * 2],
            }
        }

        fn meta(&mut self, which: usize, root: u64, txid: u64) {
            let ps = self.ps;
            let high_water = (self.pages.len() / ps) as u64;
            let p = &mut self.pages[which * ps..(which + 1) * ps];
            put_u64(p, 0, which as u64);
            put_u16(p, 8, META_PAGE);
            let m = &mut p[PAGE_HEADER..PAGE_HEADER + META_SIZE];
            put_u32(m, 0, MAGIC);
            put_u32(m, 4, VERSION);
            put_u32(m, 8, ps as u32);
            put_u64(m, 16, root);
            put_u64(m, 32, 0);
            put_u64(m, 40, high_water);
            put_u64(m, 48, txid);
            let sum = fnv1a64(&m[..META_CHECKSUMMED]);
            put_u64(m, META_CHECKSUMMED, sum);
        }

        fn push(&mut self, page: Vec<u8>) {
            assert_eq!(page.len() % self.ps, 0);
            self.pages.extend(page);
        }
    }

    fn sample() -> Vec<u8> {
        let ps = 512;
        let mut b = Builder::new(ps);
        let inline = leaf(0, &[(b"k", b"v", false)], PAGE_HEADER + ELEMENT + 2);
        let big = vec![b'x'; 700];
        // Page 2: root leaf. Page 3: branch. Pages 4-5: leaf with overflow. Page 6: leaf.
        b.push(leaf(
            2,
            &[
                (b"deep", &bucket_value(3, None), true),
                (b"in", &bucket_value(0, Some(inline)), true),
                (b"plain", b"hello", false),
            ],
            ps,
        ));
        b.push(branch(3, &[(b"a", 4), (b"m", 6)], ps));
        let mut l4 = leaf(4, &[(b"a", b"1", false), (b"big", &big, false)], ps * 2);
        put_u32(&mut l4, 12, 1);
        b.push(l4);
        b.push(leaf(
            6,
            &[
                (b"m", b"2", false),
                (
                    b"z",
                    &bucket_value(0, Some(leaf(0, &[], PAGE_HEADER))),
                    true,
                ),
            ],
            ps,
        ));
        b.meta(0, 2, 7);
        b.meta(1, 2, 8);
        b.pages
    }

    fn file_with(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        std::fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    const T: Duration = Duration::from_secs(1);

    #[test]
    fn reads_nested_inline_and_overflow() {
        let (_d, path) = file_with(&sample());
        let s = Snapshot::open(&path, T).unwrap();
        assert_eq!((s.txid(), s.page_size()), (8, 512));
        let root = s.root();
        assert_eq!(s.value(&root, b"plain").unwrap().unwrap(), b"hello");
        assert_eq!(s.value(&root, b"nothing").unwrap(), None);
        let inb = s.bucket(&root, b"in").unwrap().unwrap();
        assert_eq!(s.value(&inb, b"k").unwrap().unwrap(), b"v");
        let deep = s.bucket(&root, b"deep").unwrap().unwrap();
        assert_eq!(s.value(&deep, b"a").unwrap().unwrap(), b"1");
        assert_eq!(s.value(&deep, b"big").unwrap().unwrap(), vec![b'x'; 700]);
        assert_eq!(s.value(&deep, b"m").unwrap().unwrap(), b"2");
        assert_eq!(s.value(&deep, b"0").unwrap(), None);
        assert_eq!(s.value(&deep, b"b").unwrap(), None);
        let keys: Vec<_> = s.keys(&deep).unwrap();
        assert_eq!(
            keys,
            vec![
                (b"a".to_vec(), false),
                (b"big".to_vec(), false),
                (b"m".to_vec(), false),
                (b"z".to_vec(), true)
            ]
        );
        let empty = s.bucket(&deep, b"z").unwrap().unwrap();
        assert_eq!(s.value(&empty, b"k").unwrap(), None);
        let err = s.value(&root, b"in").unwrap_err().to_string();
        assert!(err.contains("holds a bucket"), "{err}");
        let err = s.bucket(&root, b"plain").unwrap_err().to_string();
        assert!(err.contains("holds a value"), "{err}");
    }

    #[test]
    fn newest_valid_meta_wins() {
        let mut bytes = sample();
        // Damage meta 1 (txid 8): meta 0 (txid 7) is used.
        bytes[512 + PAGE_HEADER + 48] ^= 0xff;
        let (_d, path) = file_with(&bytes);
        let s = Snapshot::open(&path, T).unwrap();
        assert_eq!(s.txid(), 7);
    }

    #[test]
    fn bad_magic_names_the_file() {
        let mut bytes = sample();
        bytes[PAGE_HEADER] ^= 0xff;
        bytes[512 + PAGE_HEADER] ^= 0xff;
        let (_d, path) = file_with(&bytes);
        let err = Snapshot::open(&path, T).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("bad magic"), "{err}");
        let (_d, path) = file_with(b"SQLite format 3\0 and then some more bytes than a meta page holds, surely enough of them");
        let err = Snapshot::open(&path, T).unwrap_err();
        assert!(matches!(err, BoltError::NotBolt { .. }), "{err}");
    }

    #[test]
    fn truncated_files_are_errors() {
        let bytes = sample();
        let (_d, path) = file_with(&bytes[..40]);
        let err = Snapshot::open(&path, T).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
        let (_d, path) = file_with(&bytes[..512 * 3]);
        let err = Snapshot::open(&path, T).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
    }

    #[test]
    fn corrupt_pages_are_errors_not_panics() {
        let mut bytes = sample();
        // Leaf 6's first element points far outside its page.
        put_u32(&mut bytes, 6 * 512 + PAGE_HEADER + 4, 100_000);
        let (_d, path) = file_with(&bytes);
        let s = Snapshot::open(&path, T).unwrap();
        let deep = s.bucket(&s.root(), b"deep").unwrap().unwrap();
        let err = s.value(&deep, b"m").unwrap_err().to_string();
        assert!(err.contains("past the page end"), "{err}");
        // Branch 3 points at itself: a cycle.
        let mut bytes = sample();
        put_u64(&mut bytes, 3 * 512 + PAGE_HEADER + 8, 3);
        let (_d, path) = file_with(&bytes);
        let s = Snapshot::open(&path, T).unwrap();
        let deep = s.bucket(&s.root(), b"deep").unwrap().unwrap();
        let err = s.value(&deep, b"a").unwrap_err().to_string();
        assert!(err.contains("cycle"), "{err}");
        // A child page id beyond the file.
        let mut bytes = sample();
        put_u64(&mut bytes, 3 * 512 + PAGE_HEADER + 8, 99);
        let (_d, path) = file_with(&bytes);
        let s = Snapshot::open(&path, T).unwrap();
        let deep = s.bucket(&s.root(), b"deep").unwrap().unwrap();
        let err = s.value(&deep, b"a").unwrap_err().to_string();
        assert!(err.contains("page id 99"), "{err}");
    }

    #[test]
    fn missing_file_and_held_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.db");
        let err = Snapshot::open(&path, T).unwrap_err();
        assert!(matches!(err, BoltError::Open { .. }), "{err}");
        assert!(err.to_string().contains("absent.db"), "{err}");

        let (_d, path) = file_with(&sample());
        let writer = Flock::lock(File::open(&path).unwrap(), FlockArg::LockExclusive).unwrap();
        let err = Snapshot::open(&path, Duration::from_millis(50)).unwrap_err();
        assert!(matches!(err, BoltError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("locked"), "{err}");
        drop(writer);
        Snapshot::open(&path, T).unwrap();
    }
}
