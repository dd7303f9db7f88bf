# Sourced by host-tools/quickstart and tests/run: installs what building and booting
# appliances needs on Debian/Ubuntu, and nothing when it is already there.
#   - qemu-system-x86: boots the appliances
#   - gcc, libc6-dev: the linker for Rust, and zstd's C code
#   - cpio, zstd, lz4, gzip, xz-utils: the tests check our archives with the standard tools
#   - apt's package lists: `appliance build` fetches Debian's cloud kernel with apt-get download
#   - make, flex, bison, bc, perl, libelf-dev, patch and linux-source-6.1 (Debian 12):
#     tests/kernel.rs builds the project's kernels from Debian's sources (5.10's and
#     6.12's are fetched by `appliance kernel build` itself, with apt and a private
#     configuration under ~/.cache/appliance/apt-src: nothing to install)
#   - nfs-ganesha, nfs-ganesha-vfs: `appliance run --results` serves a run's results over
#     NFS (tests/results.rs); a system instance the package starts is stopped (ours run on
#     a free port of 127.0.0.1 with their own configuration)
#   - openssh-server, dropbear-bin: the SSH servers `appliance build` copies into images
#     with [ssh]; openssh-client: ssh-keygen (host and login keys) and ssh (`appliance
#     ssh`, tests/ssh.rs). Installing openssh-server must not start a host sshd: a
#     temporary policy-rc.d forbids it (a host sshd on port 22 would not disturb the
#     tests, which forward free loopback ports, but a CI machine needs no open port).
#   - mmdebstrap: `appliance root create` makes reference roots with it (tests/root.rs)
#   - qemu-utils (qemu-img), ovmf (UEFI firmware), systemd-boot-efi (the EFI stub of a
#     unified kernel image), binutils (objcopy): `appliance image` writes and converts
#     disk images, `appliance run DISK` boots them (tests/image.rs)
#   - pxelinux, syslinux-common: `appliance netboot` copies PXELINUX into boot trees;
#     ipxe-qemu: the boot ROMs of QEMU's NICs, which tests/netboot.rs boots from
#   - docker-registry: the reference OCI registry ("distribution"); tests/publish.rs and
#     tests/bench/publish.sh start their own on a free port of 127.0.0.1 (a system
#     instance the package starts is stopped, as nfs-ganesha's is)
#   - slurmctld, slurmd, slurm-client, munge: tests/exp.rs starts a one-node Slurm cluster
#     of its own (configuration in a temporary directory) for `appliance exp run --on
#     slurm`; the services the packages would start are not started (policy-rc.d)
#   - fonts-dejavu-core: the font `appliance exp report` draws its plots' text with
#   - Rust >= 1.89 (rustup) when cargo is missing or older

appliance_need_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

appliance_install_deps() {
    local missing=()
    command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
    command -v cc >/dev/null || missing+=(gcc libc6-dev)
    command -v cpio >/dev/null || missing+=(cpio)
    command -v zstd >/dev/null || missing+=(zstd)
    command -v lz4 >/dev/null || missing+=(lz4)
    command -v gzip >/dev/null || missing+=(gzip)
    command -v xz >/dev/null || missing+=(xz-utils)
    command -v curl >/dev/null || missing+=(curl ca-certificates)
    command -v make >/dev/null || missing+=(make)
    command -v flex >/dev/null || missing+=(flex)
    command -v bison >/dev/null || missing+=(bison)
    command -v bc >/dev/null || missing+=(bc)
    command -v perl >/dev/null || missing+=(perl)
    command -v patch >/dev/null || missing+=(patch)
    [ -e /usr/include/libelf.h ] || missing+=(libelf-dev)
    local ganesha=()
    command -v ganesha.nfsd >/dev/null || [ -x /usr/bin/ganesha.nfsd ] || ganesha+=(nfs-ganesha)
    compgen -G '/usr/lib/*/ganesha/libfsalvfs.so' >/dev/null || ganesha+=(nfs-ganesha-vfs)
    missing+=("${ganesha[@]}")
    { command -v ssh >/dev/null && command -v ssh-keygen >/dev/null; } || missing+=(openssh-client)
    [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
    { [ -x /usr/sbin/dropbear ] && command -v dropbearkey >/dev/null; } || missing+=(dropbear-bin)
    command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
    command -v qemu-img >/dev/null || missing+=(qemu-utils)
    [ -e /usr/share/OVMF/OVMF_CODE_4M.fd ] || missing+=(ovmf)
    [ -e /usr/lib/systemd/boot/efi/linuxx64.efi.stub ] || missing+=(systemd-boot-efi)
    command -v objcopy >/dev/null || missing+=(binutils)
    [ -e /usr/lib/PXELINUX/pxelinux.0 ] || missing+=(pxelinux)
    [ -e /usr/lib/syslinux/modules/bios/ldlinux.c32 ] || missing+=(syslinux-common)
    [ -e /usr/lib/ipxe/qemu/efi-virtio.rom ] || missing+=(ipxe-qemu)
    local registry=()
    [ -x /usr/bin/docker-registry ] || registry=(docker-registry)
    missing+=("${registry[@]}")
    { [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmd ] && command -v sbatch >/dev/null; } \
        || missing+=(slurmctld slurmd slurm-client)
    [ -x /usr/sbin/munged ] || missing+=(munge)
    [ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
    # Only Debian 12 has this one: elsewhere tests/kernel.rs says what is missing.
    local kernel_source=()
    [ -e /usr/src/linux-source-6.1.tar.xz ] || kernel_source=(linux-source-6.1)
    if [ ${#missing[@]} -gt 0 ] || [ ${#kernel_source[@]} -gt 0 ] \
        || ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then
        if ! command -v apt-get >/dev/null; then
            echo "deps: apt-get not found: install ${missing[*]} yourself" >&2
            return 1
        fi
        echo "deps: apt-get install ${missing[*]:-(refreshing package lists)}" >&2
        appliance_need_root apt-get update -q
        if [ ${#missing[@]} -gt 0 ]; then
            local policy=""
            if [ ! -e /usr/sbin/policy-rc.d ]; then
                # Exit status 101: "action forbidden", so no service starts (openssh-server).
                policy=/usr/sbin/policy-rc.d
                printf '#!/bin/sh\nexit 101\n' | appliance_need_root tee "$policy" >/dev/null
                appliance_need_root chmod 755 "$policy"
            fi
            local status=0
            appliance_need_root env DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -q --no-install-recommends "${missing[@]}" || status=$?
            if [ -n "$policy" ]; then appliance_need_root rm -f "$policy"; fi
            [ "$status" -eq 0 ] || return "$status"
        fi
        if [ ${#ganesha[@]} -gt 0 ] && command -v systemctl >/dev/null \
            && systemctl is-active --quiet nfs-ganesha 2>/dev/null; then
            # Installing starts a system server on port 2049; appliance starts its own.
            appliance_need_root systemctl disable --now nfs-ganesha || true
        fi
        if [ ${#registry[@]} -gt 0 ] && command -v systemctl >/dev/null \
            && systemctl is-active --quiet docker-registry 2>/dev/null; then
            # Installing starts a system registry on port 5000; the tests start their own.
            appliance_need_root systemctl disable --now docker-registry || true
        fi
        if [ ${#kernel_source[@]} -gt 0 ] && apt-cache show "${kernel_source[@]}" >/dev/null 2>&1; then
            appliance_need_root env DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -q --no-install-recommends "${kernel_source[@]}"
        fi
    fi
    [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
    if ! command -v cargo >/dev/null || ! appliance_rust_is_recent; then
        echo "deps: installing Rust (stable) with rustup" >&2
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
        . "$HOME/.cargo/env"
    fi
}

# cargo 1.89 or newer (std::fs::File::lock, edition 2024).
appliance_rust_is_recent() {
    local v
    v=$(cargo --version 2>/dev/null | awk '{print $2}')
    [ -n "$v" ] && [ "$(printf '%s\n1.89.0\n' "$v" | sort -V | head -n1)" = "1.89.0" ]
}

# Builds the host CLI and the init (a separate no_std workspace) into target/release.
# The init's line is the one `appliance build` runs itself when it finds no init
# (host-tools/src/image/checkout.rs, whose tests check that the two agree).
appliance_build_release() {
    cargo build --release -q -p appliance-host
    cargo build --release -q --manifest-path init/Cargo.toml --target-dir target
}
