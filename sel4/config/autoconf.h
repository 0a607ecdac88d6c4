/*
 * Kernel configuration of the project's seL4 build (x86_64, pc99).
 *
 * The standalone seL4 5.0.0 Makefile ignores Kconfig: it copies
 * include/plat/pc99/autoconf.h into the build directory. `cargo xtask`
 * (xtask/src/sel4.rs) puts this file in that place in its copy of the kernel
 * tree, and the bindings crate (sel4/sys) evaluates the interface files'
 * conditions against the same file, so kernel and bindings always agree.
 *
 * Deliberately absent:
 *   CONFIG_IOMMU               the kernel must not own VT-d: iommu-server does,
 *                              through the device untyped covering its registers
 *   CONFIG_VERIFICATION_BUILD  it turns off debug printing
 *   CONFIG_SUPPORT_PCID        QEMU TCG has no INVPCID
 *   CONFIG_HUGE_PAGE           1 GiB pages are not offered by every CPU model
 *   CONFIG_X2APIC              QEMU q35 without x2apic: the xAPIC is used
 *   CONFIG_USER_STACK_TRACE_LENGTH  the Makefile sets it for DEBUG=1 builds
 * CONFIG_PRINTING must be here: the Makefile's -DCONFIG_PRINTING line assigns
 * a misspelt variable and never reaches the compiler.
 */
#define AUTOCONF_INCLUDED
#define CONFIG_KERNEL_MASTER 1
#define CONFIG_HAVE_FPU 1
#define CONFIG_WORD_SIZE 64
#define CONFIG_ARCH_X86 1
#define CONFIG_ARCH_X86_64 1
#define CONFIG_PLAT_PC99 1
#define CONFIG_TIMER_TICK_MS 2
#define CONFIG_TIME_SLICE 5
#define CONFIG_IRQ_IOAPIC 1
#define CONFIG_MAX_NUM_IOAPIC 1
#define CONFIG_XAPIC 1
#define CONFIG_FXSAVE 1
#define CONFIG_XSAVE_SIZE 512
#define CONFIG_MAX_NUM_BOOTINFO_UNTYPED_CAPS 230
#define CONFIG_SYSCALL 1
#define CONFIG_MAX_NUM_NODES 1
#define CONFIG_FASTPATH 1
#define CONFIG_FSGSBASE_INST 1
#define CONFIG_NUM_DOMAINS 1
#define CONFIG_RETYPE_FAN_OUT_LIMIT 256
#define CONFIG_ROOT_CNODE_SIZE_BITS 16
#define CONFIG_NUM_PRIORITIES 256
#define CONFIG_MAX_NUM_WORK_UNITS_PER_PREEMPTION 100
#define CONFIG_CACHE_LN_SZ 64
#define CONFIG_KERNEL_STACK_BITS 12
#define CONFIG_FPU_MAX_RESTORES_SINCE_SWITCH 64
#define CONFIG_OPTIMISATION_O2 1
#define CONFIG_MULTIBOOT_GRAPHICS_MODE_NONE 1
#define CONFIG_DEBUG_BUILD 1
#define CONFIG_PRINTING 1
#define CONFIG_IRQ_REPORTING 1
#define CONFIG_KERNEL_CFLAGS ""
#define CONFIG_KERNEL_COMPILER ""
#define CONFIG_KERNEL_EXTRA_CPPFLAGS ""
#define CONFIG_CROSS_COMPILER_PREFIX ""
#define CONFIG_DOMAIN_SCHEDULE ""
