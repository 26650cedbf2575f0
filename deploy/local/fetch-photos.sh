#!/usr/bin/env bash
# Fetches the real photographs that `prism-loadgen dataset` turns into benchmark photo sets:
# 26 camera photos (1.3 to 20 MP: landscapes, macro, people, animals, a bridge, a tree's bark)
# from Debian's wallpaper packages, sha256-checked, into ${PRISM_HOME:-$HOME/.cache/prism}/photos.
#   lomiri-wallpapers-16.04, lomiri-wallpapers-20.04   Ubuntu's photo contest winners (CC BY-SA)
#   mate-backgrounds                                   the MATE desktop's nature photos (GPL-2+)
#   plasma-workspace-wallpapers                        Volna, the only photograph among KDE's
# The wallpapers that are digital art (most of Plasma's and GNOME's) are left out: photos decode and
# compress like photos. Never in the repo (licences, size). Idempotent: what is already there with
# the expected checksum is kept. Needs apt-get and dpkg (Debian or Ubuntu); no root.
set -euo pipefail

PRISM_HOME="${PRISM_HOME:-$HOME/.cache/prism}"
PHOTOS_DIR="$PRISM_HOME/photos"
DOWNLOADS_DIR="$PRISM_HOME/downloads"

LOMIRI_16=usr/share/backgrounds
MATE=usr/share/backgrounds/mate/nature
# name in photos/, Debian package, path inside it, sha256
PHOTOS=(
    "bridge.jpg lomiri-wallpapers-16.04 $LOMIRI_16/Bridge_by_Sander_Klootwijk.jpg bd86b081f9975e2b83527f71e49b9271a8ab40885428395969d9f7d834d7f050"
    "dragonfly.jpg lomiri-wallpapers-16.04 $LOMIRI_16/Dragonfly_by_Bolly.jpg af5af17841009732def24b09bb1e669a1b09d2b4bdeee7812c371101c30d2bb3"
    "fig.jpg lomiri-wallpapers-16.04 $LOMIRI_16/Picture_0B_by_freespace.jpg c8c0ab18e48d9e0419fe42881112137f3afafc27dfddc29ec3a6d54c56d225ad"
    "wine.jpg lomiri-wallpapers-16.04 $LOMIRI_16/Wine_by_Jakkub_Mede.jpg d2e96e6d4da40dd804b3d0ce295e94de04a2d7d9b6785d42cd9d92ba58bced74"
    "aitzgorri.jpg lomiri-wallpapers-16.04 $LOMIRI_16/aitzgorri_by_Aitzol_Berasategi.jpg 66268e7b48f8854d36a28765fac6e23ec1aee251daa6da1f64715f201020ad36"
    "analog-pattern.jpg lomiri-wallpapers-16.04 $LOMIRI_16/analogpattern_by_Peter_Nerlich.jpg 15372488a192b2be2eafc67bd3ed31cbfca19abe3929e925607fcbc9cb4d4202"
    "free.jpg lomiri-wallpapers-16.04 $LOMIRI_16/free_by_Peter_Nerlich.jpg 85a5453c2fed514c75973016f3d862aca62eb7ca087618822469274ac1092373"
    "friends.jpg lomiri-wallpapers-16.04 $LOMIRI_16/friends_by_Aitzol_Berasategi.jpg cc40e313c74e421edffe3403def413c16878ce14661cce7ec5915baeab35538d"
    "greentock.jpg lomiri-wallpapers-16.04 $LOMIRI_16/greentock_by_Peter_Nerlich.jpg e7b20e2db9dcd6e2b278ca55873c2110b35d89cd38b04d0b18728726888e6889"
    "life.jpg lomiri-wallpapers-16.04 $LOMIRI_16/life_by_Aitzol_Berasategi.jpg 4c119350ead80201fe256850c3d316309ddfb4bdf10b235ce982dcde0c667c05"
    "picos-de-europa.jpg lomiri-wallpapers-16.04 $LOMIRI_16/picosdeeuropa_by_Aitzol_Berasategi.jpg 414d0072b2f6f2c555deafeaef6e45c4fed6fa9ad26eba6560ca8803959cf97a"
    "seeding.jpg lomiri-wallpapers-16.04 $LOMIRI_16/seeding_by_Clements_Engelhardt.jpg a5634d1ab5e41a3568e92d4a894a500c92b891f9ff734e50bd224d6e185a605f"
    "sunset.jpg lomiri-wallpapers-16.04 $LOMIRI_16/sunset_by_Aitzol_Berasategi.jpg 474dab6a4b9f94dc76c29dfe30e9f5db4af0fd2e33fe5d695f8152b371efca18"
    "kleiber.jpg lomiri-wallpapers-20.04 usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg 6572410c09f4492c74ccadde133565a14c0161617d5917d4c820c66d65a44ba7"
    "aqua.jpg mate-backgrounds $MATE/Aqua.jpg 5c30118205982da441bf7e6a1ada636a8a0be879408140b3148280c665ed6bce"
    "blinds.jpg mate-backgrounds $MATE/Blinds.jpg f7aac0dcc2e06d0491643e84df3da1d9db7c4610f58806a880d56e074799f600"
    "dune.jpg mate-backgrounds $MATE/Dune.jpg 8a67c2cb0be8c46b70c237311a4fa4d2b4ac7d39568135384787801fa5cc9a91"
    "fresh-flower.jpg mate-backgrounds $MATE/FreshFlower.jpg 972b0a0c4e5e3fa93f4f244fc84bc64b121a5eac3aaa5856f1308c1f38a02f8e"
    "garden.jpg mate-backgrounds $MATE/Garden.jpg d3095ee09d425ef23d27155412136cf14fc3c9af76ca58b452f55e23da324e78"
    "ladybird.jpg mate-backgrounds $MATE/LadyBird.jpg e35a9a4126ef969c90b29c038058c5a575a20eadd84106a37bf1fa9931e7b61d"
    "rain-drops.jpg mate-backgrounds $MATE/RainDrops.jpg 3e4ea9671c28c90a86cf67b3db9daf18c4741587c596333a7529ca589aaa0c16"
    "storm.jpg mate-backgrounds $MATE/Storm.jpg 77ca53077831d3237f73393a91fc879158abc046d852941c26e90de336356957"
    "two-wings.jpg mate-backgrounds $MATE/TwoWings.jpg 665e5abf8a5399070a91a9a8e455fe071e5b61697ff78fdeda4e9843ef545aeb"
    "wood.jpg mate-backgrounds $MATE/Wood.jpg 19c78500ac00a622e19907ab9cc7d06d46fe08c4a6142759a84195696150ec07"
    "yellow-flower.jpg mate-backgrounds $MATE/YellowFlower.jpg 254da96256acb7add685679775a04d1e4a5bc8cd13e5a5a3d61351ce198a5306"
    "volna.jpg plasma-workspace-wallpapers usr/share/wallpapers/Volna/contents/images/5120x2880.jpg abc30b4fc6f6a83b6156e6b59ac283c067de40af820aafac8ac7c4fd83a9607c"
)

log() { printf 'fetch-photos: %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

for tool in apt-get dpkg sha256sum; do
    command -v "$tool" >/dev/null || die "'$tool' is required (this script expects Debian or Ubuntu)"
done

# shellcheck source=deploy/local/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
copy_from_debian_packages "$PHOTOS_DIR" "${PHOTOS[@]}"

log "ready: ${#PHOTOS[@]} photos in $PHOTOS_DIR"
log "next: cargo run --release -p prism-loadgen -- dataset --count 200 --seed 1 --out DIR"
