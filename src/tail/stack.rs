//! Giving back the stack pages an idle tailer thread no longer uses.
//!
//! Every followed file has its own thread, and a thread's stack keeps every page it
//! ever touched resident: opening a file, logging and the first reads reach a few
//! pages deeper than a tailer waiting for its file to change ever needs again. With
//! 10,000 quiet files those pages are tens of megabytes. Before each long wait a
//! tailer drops the pages below its current frame (`MADV_DONTNEED`); they come
//! back as fresh zero pages the next time the thread calls that deep. Memory below the
//! stack pointer holds nothing by the ABI, so this is invisible to the code.

/// The lowest address of the calling thread's stack, to trim down to.
#[derive(Debug, Clone, Copy)]
pub struct StackTrim {
    low: usize,
    page: usize,
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
