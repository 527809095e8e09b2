//! tc attachments that survive the agent: TCX links pinned in bpffs.
//!
//! Each (program, device) pair has one link pinned at `<pin_dir>/links/<program>-if<ifindex>` (bpffs refuses dots in names).
//! A restarted agent opens the pinned link and swaps its program in place with
//! `BPF_LINK_UPDATE`, so traffic never sees a moment without a program. A pinned link whose
//! device has gone (the update fails) is unpinned and attached anew.

use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        links::{FdLink, LinkError, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
    },
};

use super::missing;
use crate::{DatapathError, object::PROGRAMS};

/// Where a program's link on a device is pinned (`pin_name` names the device, e.g. `if7`).
pub(crate) fn pin_path(links_dir: &Path, program: &str, pin_name: &str) -> PathBuf {
    links_dir.join(format!("{program}-{pin_name}"))
}

fn attach_err(program: &'static str, device: &str, reason: impl ToString) -> DatapathError {
    DatapathError::Attach {
        program,
        device: device.to_owned(),
        reason: reason.to_string(),
    }
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    program: &'static str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    ebpf.program_mut(program)
        .ok_or_else(|| attach_err(program, "-", "program missing from the object"))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| DatapathError::Program {
            program,
            source: Box::new(e),
        })
}

/// Points the link pinned at `pin` to this process's `program`. `Ok(false)`: nothing pinned
/// there, or the pinned link was defunct and has been unpinned.
fn update_pinned(
    ebpf: &mut Ebpf,
    program: &'static str,
    device: &str,
    pin: &Path,
) -> Result<bool, DatapathError> {
    let old = match PinnedLink::from_pin(pin) {
        Ok(link) => link,
        Err(LinkError::SyscallError(s)) if missing::is_missing_file(&s.io_error) => {
            return Ok(false);
        }
        Err(e) => {
            let detail = match &e {
                LinkError::SyscallError(s) => format!("{e}: {}", s.io_error),
                _ => e.to_string(),
            };
            return Err(attach_err(
                program,
                device,
                format!("opening {}: {detail}", pin.display()),
            ));
        }
    };
    let prog = classifier(ebpf, program)?;
    let updated = SchedClassifierLink::try_from(FdLink::from(old))
        .map_err(|e| e.to_string())
        .and_then(|link| prog.attach_to_link(link).map_err(|e| e.to_string()));
    match updated {
        Ok(id) => {
            // The pin holds the link; dropping our handle only closes a file descriptor.
            let link = prog
                .take_link(id)
                .map_err(|e| attach_err(program, device, e))?;
            drop(link);
            Ok(true)
        }
        Err(reason) => {
            tracing::info!(program, device, %reason, "pinned link is defunct, attaching anew");
            missing::remove_pin(pin)?;
            Ok(false)
        }
    }
}

/// Attaches `program` to `device` (TCX, kernel >= 6.6) and pins the link, or updates the link
/// already pinned for that pair.
pub(crate) fn attach_pinned(
    ebpf: &mut Ebpf,
    links_dir: &Path,
    program: &'static str,
    device: &str,
    pin_name: &str,
    attach_type: TcAttachType,
) -> Result<(), DatapathError> {
    let pin = pin_path(links_dir, program, pin_name);
    if update_pinned(ebpf, program, device, &pin)? {
        return Ok(());
    }
    let prog = classifier(ebpf, program)?;
    let id = prog
        .attach_with_options(
            device,
            attach_type,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(|e| attach_err(program, device, e))?;
    let link = prog
        .take_link(id)
        .map_err(|e| attach_err(program, device, e))?;
    let fd_link: FdLink = link
        .try_into()
        .map_err(|e: LinkError| attach_err(program, device, e))?;
    fd_link.pin(&pin).map_err(|e| {
        attach_err(
            program,
            device,
            format!("pinning at {}: {}", pin.display(), pin_detail(&e)),
        )
    })?;
    Ok(())
}

fn pin_detail(e: &aya::pin::PinError) -> String {
    match e {
        aya::pin::PinError::SyscallError(s) => format!("{e}: {}", s.io_error),
        _ => e.to_string(),
    }
}

/// Unpins (and so detaches) `program`'s link pinned under `pin_name`; nothing pinned there is
/// fine.
pub(crate) fn detach_pinned(
    links_dir: &Path,
    program: &str,
    pin_name: &str,
) -> Result<(), DatapathError> {
    missing::remove_pin(&pin_path(links_dir, program, pin_name)).map(drop)
}

/// Moves every link pinned under `links_dir` to this process's programs. Returns the
/// (program, device) pairs now served by this process.
pub(crate) fn take_over_all(
    ebpf: &mut Ebpf,
    links_dir: &Path,
) -> Result<Vec<(&'static str, String)>, DatapathError> {
    let mut taken = Vec::new();
    let entries = fs::read_dir(links_dir).map_err(|source| DatapathError::Io {
        path: links_dir.to_owned(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| DatapathError::Io {
            path: links_dir.to_owned(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((program, device)) = PROGRAMS.iter().find_map(|p| {
            name.strip_prefix(p)
                .and_then(|rest| rest.strip_prefix('-'))
                .map(|device| (*p, device.to_owned()))
        }) else {
            tracing::warn!(file = %name, "ignoring unknown pinned link");
            continue;
        };
        if update_pinned(ebpf, program, &device, &entry.path())? {
            taken.push((program, device));
        }
    }
    Ok(taken)
}
