//! The encoding, byte for byte where nft's own bytes were checked (`nft --debug=mnl`).
