variable "region" {
  type        = string
  description = "AWS region of the cluster."
}

variable "cluster" {
  type        = string
  default     = "web"
  description = "The cluster the group runs (tag berth:cluster): a [clusters.<name>] table of the manifest baked into the image."
}

variable "group_name" {
  type        = string
  default     = null
  description = "Name of the autoscaling group; default <cluster>-<region>."
}

variable "berth_version" {
  type        = string
  description = "Preferred version of every component (tag berth:version). Changing it rolls the group out."
}

variable "max_unavailable" {
  type        = string
  default     = null
  description = "Tag berth:max-unavailable: a count (\"2\") or a percent (\"10%\") of desired capacity. Unset: 1."
}

variable "drift_grace" {
  type        = string
  default     = null
  description = "Tag berth:drift-grace: how long drift must last before an instance retires (\"5m\"). Unset: 60s."
}

variable "ami_id" {
  type        = string
  description = "The image baked by packaging/packer."
}

variable "instance_type" {
  type    = string
  default = "t3.small"
}

variable "vpc_id" {
  type = string
}

variable "subnet_ids" {
  type        = list(string)
  description = "Subnets of the group and the NLB. Instances must reach the AWS APIs and the image registry from them."
}

variable "min_size" {
  type    = number
  default = 2
}

variable "max_size" {
  type    = number
  default = 4
}

variable "desired_capacity" {
  type    = number
  default = 2
}

variable "port" {
  type        = number
  default     = 80
  description = "The port the NLB listens on and forwards to, on the instances."
}

variable "ingress_cidrs" {
  type        = list(string)
  default     = ["0.0.0.0/0"]
  description = "Who may reach the port. Keep the VPC's range in it: the NLB's health checks come from there."
}

variable "internal" {
  type    = bool
  default = false
}

variable "launch_hook_timeout" {
  type        = number
  default     = 300
  description = "Heartbeat timeout (s) of the launch hook: how long a member waits for its agent's first heartbeat before it is abandoned."
}

variable "drain_timeout" {
  type        = number
  default     = 120
  description = "Heartbeat timeout (s) of the terminating hook: longer than the longest drain."
}

variable "instance_tags" {
  type        = map(string)
  default     = {}
  description = "Extra tags propagated to the instances."

  # Instance-metadata tags are enabled (main.tf): a non-compliant key makes
  # every launch fail, so refuse it here, at plan time.
  validation {
    condition = alltrue([
      for k in keys(var.instance_tags) :
      can(regex("^[A-Za-z0-9+=.,_:@-]{1,128}$", k)) && !contains([".", "..", "_index"], k)
    ])
    error_message = "Instance tag keys may contain only letters, digits and + - = . , _ : @ (no spaces, no \"/\"), and may not be \".\", \"..\" or \"_index\": instance-metadata tags are enabled."
  }
}
