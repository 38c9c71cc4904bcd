//! Giving back the stack pages an idle tailer thread no longer uses.
//!
//! Every followed file has its own thread, and a thread's stack keeps every page it
//! ever touched resident: opening a file, logging and the first reads reach a few
//! pages deeper than a tailer waiting for its file to change ever needs again. With
//! 10,000 quiet files those pages are tens of megabytes. Before each long wait a
//! tailer drops the pages below its current frame (`MADV_DONTNEED`); they come
//! back as fresh zero pages the next time the thread calls that deep. Memory below the
//! stack pointer holds nothing by the ABI, so this is invisible to the code.
//!
//! The same goes for the thread's static TLS block (x86-64 glibc, where it sits just
//! below the thread pointer, at the top of the stack mapping): glibc zeroes every
//! module's thread-locals in every new thread, and librdkafka's (16 KiB, linked into
//! the binary, never used by a tailer) are four resident pages per thread. A page of it
//! that is all zero is dropped; it reads back as zeros, so that is invisible too (no
//! other thread writes a tailer's thread-locals; the thread itself is in here).

/// The lowest address of the calling thread's stack, to trim down to.
#[derive(Debug, Clone, Copy)]
pub struct StackTrim {
    low: usize,
    page: usize,
    /// The page-aligned part of this thread's static TLS (`[start, end)`), if known.
    tls: Option<(usize, usize)>,
}

impl StackTrim {
    /// The calling thread's stack bounds (`pthread_getattr_np`); `None` if unknown.
    pub fn for_this_thread() -> Option<StackTrim> {
        // SAFETY: attr is initialized by pthread_getattr_np before use and destroyed
        // after; the out-pointers point at locals.
        unsafe {
            let mut attr: libc::pthread_attr_t = std::mem::zeroed();
            if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
                return None;
            }
            let mut addr: *mut libc::c_void = std::ptr::null_mut();
            let mut size: libc::size_t = 0;
            let r = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
            libc::pthread_attr_destroy(&mut attr);
            let page = usize::try_from(libc::sysconf(libc::_SC_PAGESIZE)).ok()?;
            (r == 0 && !addr.is_null() && page.is_power_of_two()).then_some(StackTrim {
                low: addr as usize,
                page,
                tls: static_tls(page),
            })
        }
    }

    /// Drops the resident pages of this thread's stack below the caller's frame, less
    /// one page of margin (this function's frame, the system call's, and the wait that
    /// follows). Must be called on the thread `for_this_thread` was called on.
    #[inline(never)]
    pub fn trim(&self) {
        let marker = 0u8;
        let sp = std::hint::black_box(std::ptr::addr_of!(marker)) as usize;
        let top = (sp & !(self.page - 1)).saturating_sub(self.page);
        let low = (self.low + self.page - 1) & !(self.page - 1);
        if top > low {
            // SAFETY: [low, top) lies inside this thread's stack, strictly below the
            // live frames (the stack grows down); nothing there is in use. A failure
            // only leaves the pages resident.
            unsafe {
                libc::madvise(low as *mut libc::c_void, top - low, libc::MADV_DONTNEED);
            }
        }
        if let Some((start, end)) = self.tls {
            drop_zero_pages(start, end, self.page);
        }
    }
}

/// The whole pages of the calling thread's static TLS block that belong to the
/// executable (its `PT_TLS` segment, which holds every statically linked library's
/// thread-locals). x86-64 glibc puts that block right below the thread pointer
/// (`pthread_self()`); elsewhere the layout differs and nothing is dropped.
#[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
fn static_tls(page: usize) -> Option<(usize, usize)> {
    // SAFETY: getauxval only reads the auxiliary vector; AT_PHDR points at the
    // executable's program headers, AT_PHNUM entries of them, mapped for the
    // process's lifetime.
    let (memsz, align) = unsafe {
        let phdr = libc::getauxval(libc::AT_PHDR) as *const libc::Elf64_Phdr;
        let phnum = libc::getauxval(libc::AT_PHNUM) as usize;
        if phdr.is_null() {
            return None;
        }
        let headers = std::slice::from_raw_parts(phdr, phnum);
        let tls = headers.iter().find(|h| h.p_type == libc::PT_TLS)?;
        (
            usize::try_from(tls.p_memsz).ok()?,
            usize::try_from(tls.p_align).ok()?,
        )
    };
    // SAFETY: pthread_self has no preconditions; on x86-64 glibc it is the thread
    // pointer, with the executable's TLS block ending at most `align` bytes below it.
    let tp = unsafe { libc::pthread_self() } as usize;
    let lo = tp.checked_sub(memsz + align.max(1))?;
    let start = (lo + page - 1) & !(page - 1);
    let end = tp & !(page - 1);
    (end > start).then_some((start, end))
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu")))]
fn static_tls(_page: usize) -> Option<(usize, usize)> {
    None
}

/// Drops every page of `[start, end)` that holds only zeros (runs of them in one call).
/// Must only be given memory that no other thread writes: a write between the check
/// and the drop would be lost.
fn drop_zero_pages(start: usize, end: usize, page: usize) {
    let words = page / std::mem::size_of::<u64>();
    let mut run: Option<usize> = None;
    let mut addr = start;
    while addr <= end {
        // SAFETY: [start, end) is mapped memory of this thread (its TLS block), page
        // aligned; it is read as u64 words, which any bit pattern is.
        let zero = addr < end
            && unsafe { std::slice::from_raw_parts(addr as *const u64, words) }
                .iter()
                .all(|w| std::hint::black_box(*w) == 0);
        match (zero, run) {
            (true, None) => run = Some(addr),
            (false, Some(from)) => {
                // SAFETY: [from, addr) is whole pages of this thread's TLS that hold only
                // zeros; after the drop they read as zeros again.
                unsafe {
                    libc::madvise(from as *mut libc::c_void, addr - from, libc::MADV_DONTNEED);
                }
                run = None;
            }
            _ => {}
        }
        addr += page;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    thread_local! {
        static BIG: Cell<[u8; 3 * 4096]> = const { Cell::new([0; 3 * 4096]) };
        static MARK: Cell<u64> = const { Cell::new(0x5eed) };
    }

    /// Resident pages of `[start, end)` (page aligned).
    fn resident_in(start: usize, end: usize, page: usize) -> usize {
        let mut v = vec![0u8; (end - start) / page];
        // SAFETY: the range is mapped memory of this thread; v has one byte per page.
        let r = unsafe { libc::mincore(start as *mut libc::c_void, end - start, v.as_mut_ptr()) };
        assert_eq!(r, 0, "mincore: {}", std::io::Error::last_os_error());
        v.iter().filter(|b| **b & 1 == 1).count()
    }

    #[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
    #[test]
    fn zero_pages_of_the_static_tls_are_dropped_and_thread_locals_keep_their_values() {
        std::thread::spawn(|| {
            let t = StackTrim::for_this_thread().expect("stack bounds");
            let (start, end) = t.tls.expect("the static TLS block is found");
            let big = BIG.with(|b| b.as_ptr() as usize);
            let (from, to) = (
                (big + t.page - 1) & !(t.page - 1),
                (big + 3 * 4096) & !(t.page - 1),
            );
            assert!(
                start <= from && to <= end && to > from,
                "BIG at {big:#x} is not in the TLS block found, {start:#x}..{end:#x}"
            );
            MARK.with(|m| m.set(m.get() + 1));
            // glibc zeroed BIG at the thread's start: resident, all zero.
            let before = resident_in(from, to, t.page);
            t.trim();
            let after = resident_in(from, to, t.page);
            assert!(
                before >= 1 && after == 0,
                "zero TLS pages resident: {before} before, {after} after the trim"
            );
            assert_eq!(
                MARK.with(Cell::get),
                0x5eee,
                "a thread-local lost its value"
            );
            BIG.with(|b| {
                let mut v = b.get();
                v[5000] = 9;
                b.set(v);
            });
            t.trim();
            assert_eq!(BIG.with(|b| b.get()[5000]), 9, "a written page was dropped");
        })
        .join()
        .unwrap();
    }

    #[inline(never)]
    fn deep(n: usize) -> u8 {
        let buf = std::hint::black_box([n as u8; 4096]);
        if n == 0 {
            buf[7]
        } else {
            deep(n - 1).wrapping_add(buf[9])
        }
    }

    #[test]
    fn trimming_keeps_the_live_frames_and_the_thread_goes_on() {
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                let t = StackTrim::for_this_thread().expect("stack bounds");
                let live = std::hint::black_box([42u8; 512]);
                let before = deep(16);
                let resident = |t: &StackTrim| {
                    let marker = 0u8;
                    let sp = std::ptr::addr_of!(marker) as usize & !(t.page - 1);
                    let low = (t.low + t.page - 1) & !(t.page - 1);
                    let pages = (sp - low) / t.page;
                    let mut v = vec![0u8; pages];
                    // SAFETY: the range is this thread's mapped stack; v has one byte per page.
                    let r = unsafe {
                        libc::mincore(low as *mut libc::c_void, sp - low, v.as_mut_ptr())
                    };
                    assert_eq!(r, 0, "mincore: {}", std::io::Error::last_os_error());
                    v.iter().filter(|b| **b & 1 == 1).count()
                };
                let touched = resident(&t);
                t.trim();
                let left = resident(&t);
                assert!(
                    touched >= 16 && left <= 3,
                    "resident pages below: {touched} before, {left} after the trim"
                );
                // The frames above survive, and the trimmed region works again.
                assert!(live.iter().all(|&b| b == 42));
                assert_eq!(deep(16), before);
                t.trim();
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
