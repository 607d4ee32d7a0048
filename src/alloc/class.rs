//! Size classes: which class serves a layout, and how many blocks a cid's cache of
//! it holds.

use std::alloc::Layout;

/// Number of size classes.
pub const CLASSES: usize = 40;
/// Largest request served from the size classes.
pub const MAX_SMALL: usize = 32 * 1024;

/// Size of class `class` in bytes: multiples of 16 up to 128, then four classes per
/// power of two (160, 192, 224, 256, 320, ...).
///
/// ```
/// use percid::alloc::{CLASSES, MAX_SMALL, class_size};
///
/// assert_eq!(class_size(0), 16);
/// assert_eq!(class_size(CLASSES - 1), MAX_SMALL);
/// ```
pub const fn class_size(class: usize) -> usize {
    if class < 8 {
        (class + 1) * 16
    } else {
        let j = class - 8;
        let k = 7 + j / 4;
        (4 + j % 4 + 1) << (k - 2)
    }
}

/// The class of a request of `size` bytes aligned to at most 16.
#[inline(always)]
fn class_of_size(size: usize) -> usize {
    let s = size.max(1) - 1;
    if s < 128 {
        s >> 4
    } else {
        let k = (usize::BITS - 1 - s.leading_zeros()) as usize;
        8 + (k - 7) * 4 + (s >> (k - 2)) - 4
    }
}

/// The class serving `layout`: the smallest that holds its size and whose size is a
/// multiple of its alignment; `None` for the system allocator.
///
/// ```
/// use percid::alloc::{class_of, class_size};
/// use std::alloc::Layout;
///
/// // 100 bytes are served by the 112-byte class; 64 KiB by the system allocator.
/// assert_eq!(class_of(Layout::new::<[u8; 100]>()).map(class_size), Some(112));
/// assert_eq!(class_of(Layout::new::<[u8; 65536]>()), None);
/// ```
#[inline(always)]
pub fn class_of(layout: Layout) -> Option<usize> {
    let (size, align) = (layout.size(), layout.align());
    if size > MAX_SMALL {
        return None;
    }
    if align <= 16 {
        return Some(class_of_size(size));
    }
    if align > MAX_SMALL {
        return None;
    }
    let mut class = class_of_size(size.max(align));
    while class < CLASSES {
        if class_size(class).is_multiple_of(align) {
            return Some(class);
        }
        class += 1;
    }
    None
}

/// Blocks a class's cache holds at most: 64 KiB worth, between 4 and 256.
pub(super) const fn cache_capacity(class: usize) -> u16 {
    let n = (64 * 1024) / class_size(class);
    if n < 4 {
        4
    } else if n > 256 {
        256
    } else {
        n as u16
    }
}

/// Blocks moved between a cache and the heap at a time: half a cache.
pub(super) const fn batch(class: usize) -> u64 {
    let b = cache_capacity(class) as u64 / 2;
    if b == 0 { 1 } else { b }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_grow_and_end_at_the_small_limit() {
        for c in 1..CLASSES {
            assert!(class_size(c) > class_size(c - 1), "class {c}");
            assert!(class_size(c).is_multiple_of(16));
        }
        assert_eq!(class_size(0), 16);
        assert_eq!(class_size(CLASSES - 1), MAX_SMALL);
    }

    #[test]
    fn every_small_layout_gets_the_tightest_fitting_class() {
        for align in [1usize, 2, 4, 8, 16, 32, 64, 128, 256, 4096] {
            for size in 1..=MAX_SMALL {
                let layout = Layout::from_size_align(size, align).unwrap();
                let Some(class) = class_of(layout) else {
                    assert!(align > 16, "size {size} align {align} has no class");
                    continue;
                };
                let cs = class_size(class);
                assert!(cs >= size, "size {size} align {align}: class of {cs} bytes");
                assert!(
                    cs.is_multiple_of(align),
                    "size {size}: {cs} not {align}-aligned"
                );
                if align <= 16 && class > 0 {
                    assert!(
                        class_size(class - 1) < size,
                        "size {size}: a smaller class fits"
                    );
                }
            }
        }
    }

    #[test]
    fn large_or_over_aligned_requests_go_to_the_system() {
        assert_eq!(
            class_of(Layout::from_size_align(MAX_SMALL + 1, 8).unwrap()),
            None
        );
        assert_eq!(
            class_of(Layout::from_size_align(64, 64 * 1024).unwrap()),
            None
        );
    }

    #[test]
    fn caches_hold_about_64_kib() {
        assert_eq!(cache_capacity(0), 256);
        assert_eq!(cache_capacity(class_of_size(1024)), 64);
        assert_eq!(cache_capacity(CLASSES - 1), 4);
        assert_eq!(batch(CLASSES - 1), 2);
    }
}
