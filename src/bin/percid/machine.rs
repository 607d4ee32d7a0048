//! Facts about the machine, printed with every status and every benchmark table
//! (DESIGN.md section 4: a number without its machine line cannot be compared).

use std::fs;
use std::time::{SystemTime, UNIX_EPOCH};

/// What the status page and the bench machine line report.
#[derive(Clone, Debug)]
pub struct Machine {
    pub cpu_model: String,
    pub cpus_online: usize,
    /// CPUs in this thread's affinity mask: what `taskset` or a cgroup cpuset allows.
    pub cpus_allowed: usize,
    pub kernel: String,
    pub libc: String,
    pub numa_nodes: usize,
}

impl Machine {
    pub fn probe() -> Machine {
        Machine {
            cpu_model: cpu_model(),
            cpus_online: cpus_online(),
            cpus_allowed: cpus_allowed(),
            kernel: kernel_release(),
            libc: libc_version(),
            numa_nodes: numa_nodes(),
        }
    }
}

/// The kernel release from `uname(2)`, e.g. `6.18.44`.
pub fn kernel_release() -> String {
    let mut uts = std::mem::MaybeUninit::<libc::utsname>::uninit();
    // SAFETY: `uname` only writes the struct we hand it, which is large enough by type.
    let rc = unsafe { libc::uname(uts.as_mut_ptr()) };
    if rc != 0 {
        return "unknown".to_owned();
    }
    // SAFETY: `uname` returned 0, so it initialised every field.
    let uts = unsafe { uts.assume_init() };
    // Read up to the NUL without trusting it to be there.
    let bytes: Vec<u8> = uts
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `glibc X.Y` from the running C library, not the one we were built against.
#[cfg(target_env = "gnu")]
pub fn libc_version() -> String {
    // SAFETY: `gnu_get_libc_version` takes no arguments and returns a pointer to a
    // static NUL-terminated string that lives as long as the process.
    let version = unsafe { std::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) };
    format!("glibc {}", version.to_string_lossy())
}

#[cfg(not(target_env = "gnu"))]
pub fn libc_version() -> String {
    "musl/unknown".to_owned()
}

/// The first `model name` of /proc/cpuinfo; aarch64 kernels print no such line, so fall
/// back to the fields they do print.
pub fn cpu_model() -> String {
    let Ok(info) = fs::read_to_string("/proc/cpuinfo") else {
        return "unknown".to_owned();
    };
    ["model name", "Hardware", "Processor", "uarch", "cpu model"]
        .iter()
        .find_map(|key| cpuinfo_field(&info, key))
        .unwrap_or_else(|| "unknown".to_owned())
}

fn cpuinfo_field(info: &str, key: &str) -> Option<String> {
    info.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name.trim() == key && !value.trim().is_empty()).then(|| value.trim().to_owned())
    })
}

pub fn cpus_online() -> usize {
    // SAFETY: `sysconf` has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(1)
}

/// CPUs in the calling thread's affinity mask. `cpu_set_t` holds 1024 CPUs; on larger
/// machines the call fails and std's count (which also reads the mask) is used instead.
pub fn cpus_allowed() -> usize {
    // SAFETY: `cpu_set_t` is a plain bit array, for which all-zero is a valid value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: we pass our own set and its exact size; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
    if rc == 0 {
        // SAFETY: `set` is initialised and was filled by the kernel.
        let n = unsafe { libc::CPU_COUNT(&set) };
        if let Ok(n) = usize::try_from(n)
            && n > 0
        {
            return n;
        }
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// NUMA nodes, as percid's topology sees them (hwloc with feature `numa`, sysfs
/// otherwise; one node on a machine without NUMA support).
pub fn numa_nodes() -> usize {
    percid::numa::topology().node_count()
}

/// Current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_utc(secs)
}

fn format_utc(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let rem = unix_secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`, <https://howardhinnant.github.io/date_algorithms.html>).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_dates() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_767_225_599), "2025-12-31T23:59:59Z");
    }

    #[test]
    fn probes_something_sane() {
        let m = Machine::probe();
        assert!(m.cpus_allowed >= 1 && m.cpus_online >= 1 && m.numa_nodes >= 1);
        assert!(!m.kernel.is_empty());
    }

    #[test]
    fn reads_cpuinfo_fields() {
        let info = "processor\t: 0\nmodel name\t: Test CPU @ 1GHz\n";
        assert_eq!(
            cpuinfo_field(info, "model name").as_deref(),
            Some("Test CPU @ 1GHz")
        );
        assert_eq!(cpuinfo_field(info, "Hardware"), None);
    }
}
