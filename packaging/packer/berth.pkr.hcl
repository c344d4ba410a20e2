# Bakes a machine image for berth: Docker Engine, the berth package, the
# fleet manifest, and the unit enabled, so every instance booted from it
# starts the agent. Walkthrough: docs/aws-setup.md.
#
#   packer init packaging/packer
#   packer build -var region=eu-west-1 -var package=berth_0.1.0_amd64.deb packaging/packer
#
# The defaults build on Debian 12 with the .deb. For the .rpm, build on
# Amazon Linux 2023:
#   -var package=berth-0.1.0-1.x86_64.rpm -var source_ami_owner=amazon \
#   -var 'source_ami_name=al2023-ami-2023.*-x86_64' -var ssh_username=ec2-user

packer {
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.3.0"
    }
  }
}

variable "region" {
  type = string
}

variable "package" {
  type        = string
  description = "The berth .deb or .rpm to install; its extension picks apt or dnf."
}

variable "manifest" {
  type        = string
  default     = ""
  description = "The fleet manifest to bake in; default berth.toml beside this template."
}

variable "instance_type" {
  type    = string
  default = "t3.small"
}

variable "source_ami_name" {
  type    = string
  default = "debian-12-amd64-*"
}

variable "source_ami_owner" {
  type        = string
  default     = "136693071363"
  description = "Debian's account; \"amazon\" for Amazon Linux."
}

variable "ssh_username" {
  type    = string
  default = "admin"
}

locals {
  manifest = var.manifest != "" ? var.manifest : "${path.root}/berth.toml"
  # Where the package is uploaded; the extension is kept for apt and dnf.
  package = "/tmp/${basename(var.package)}"
}

source "amazon-ebs" "berth" {
  region        = var.region
  instance_type = var.instance_type
  ssh_username  = var.ssh_username
  ami_name      = "berth-${formatdate("YYYYMMDD-hhmmss", timestamp())}"

  source_ami_filter {
    filters = {
      name                = var.source_ami_name
      architecture        = "x86_64"
      virtualization-type = "hvm"
      root-device-type    = "ebs"
    }
    owners      = [var.source_ami_owner]
    most_recent = true
  }

  # Instances of the image default to IMDSv2 only, as berth requires (the
  # launch template in packaging/terraform says so again).
  imds_support = "v2.0"

  tags = {
    Name = "berth"
  }
}

build {
  sources = ["source.amazon-ebs.berth"]

  provisioner "file" {
    source      = var.package
    destination = local.package
  }

  provisioner "file" {
    source      = local.manifest
    destination = "/tmp/berth.toml"
  }

  provisioner "shell" {
    execute_command  = "chmod +x {{ .Path }}; sudo env {{ .Vars }} {{ .Path }}"
    inline_shebang   = "/bin/sh -eux"
    environment_vars = ["PACKAGE=${local.package}"]
    inline = [
      # Docker Engine and the package (it installs /usr/bin/berth and the
      # unit); apt or dnf resolves the package's dependencies.
      "case \"$PACKAGE\" in *.deb) apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io \"$PACKAGE\" ;; *.rpm) dnf install -y -q docker \"$PACKAGE\" ;; *) echo \"package must be a .deb or an .rpm\" >&2; exit 1 ;; esac",

      # The fleet manifest, where the unit reads it. Private: environment
      # values may be secrets.
      "install -d -m 0755 /etc/berth",
      "install -m 0600 -o root -g root /tmp/berth.toml /etc/berth/berth.toml",

      # Refuse to bake an invalid manifest (the unit runs the same check as
      # ExecStartPre at every boot).
      "/usr/bin/berth validate --config /etc/berth/berth.toml",

      # Start at boot.
      "systemctl enable docker.service berth.service",
      "systemctl is-enabled berth.service",

      # Never bake a pin: each instance pins the versions its group prefers
      # when it first boots. If the package started the agent here, stop it
      # and empty its data directory.
      "systemctl stop berth.service || true",
      "if [ -d /var/lib/berth ]; then find /var/lib/berth -mindepth 1 -delete; fi",
      "rm -f \"$PACKAGE\" /tmp/berth.toml",
    ]
  }
}
