# One berth cluster on AWS: an autoscaling group of instances booted from the
# image packaging/packer bakes, the instance profile berth needs, and a
# Network Load Balancer in front. Walkthrough: docs/aws-setup.md.
#
# What berth itself relies on is marked "berth:" below: the instance
# metadata options, the group's tags and its two lifecycle hooks.

terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0"
    }
  }
}

provider "aws" {
  region = var.region
}

locals {
  group_name = coalesce(var.group_name, "${var.cluster}-${var.region}")

  # Optional rollout settings (docs/rollouts.md): a tag is set only when its
  # variable is; unset, the agent uses its default.
  rollout_tags = {
    "berth:max-unavailable" = var.max_unavailable
    "berth:drift-grace"     = var.drift_grace
  }
}

# ---- IAM: the instance profile the agent runs with -------------------------

resource "aws_iam_role" "berth" {
  name_prefix = "berth-${var.cluster}-"
  # Trust policy: EC2 may assume the role.
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ec2.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
}

# berth: the least-privilege policy, loaded from docs/iam-policy.json (not a
# copy, so the two never differ; if you copy this directory elsewhere, point
# this at your copy of the file). It lets the agent act only on groups that
# carry a berth:cluster tag: the group below sets one.
resource "aws_iam_role_policy" "berth" {
  name   = "berth"
  role   = aws_iam_role.berth.id
  policy = file("${path.module}/../../docs/iam-policy.json")
}

resource "aws_iam_instance_profile" "berth" {
  name_prefix = "berth-${var.cluster}-"
  role        = aws_iam_role.berth.name
}

# ---- Instances ------------------------------------------------------------

resource "aws_security_group" "instances" {
  name_prefix = "berth-${var.cluster}-"
  vpc_id      = var.vpc_id

  # The NLB keeps the clients' addresses (instance targets), so the clients
  # (and the NLB's health checks, from inside the VPC) are let in here.
  ingress {
    from_port   = var.port
    to_port     = var.port
    protocol    = "tcp"
    cidr_blocks = var.ingress_cidrs
  }
  # The agent calls the AWS APIs and pulls from the image registry.
  egress {
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

resource "aws_launch_template" "berth" {
  name_prefix            = "berth-${var.cluster}-"
  image_id               = var.ami_id
  instance_type          = var.instance_type
  vpc_security_group_ids = [aws_security_group.instances.id]

  iam_instance_profile {
    arn = aws_iam_instance_profile.berth.arn
  }

  metadata_options {
    http_endpoint = "enabled"
    # berth: IMDSv2 only (the agent asks for a session token first).
    http_tokens = "required"
    # One hop: the agent on the host reaches IMDS; containers behind
    # Docker's bridge are one hop further and do not, so they never see the
    # role's credentials (a container with network_mode = "host" would).
    http_put_response_hop_limit = 1
    # berth: instance tags in IMDS. The agent reads its group from its own
    # aws:autoscaling:groupName tag there, without an API call
    # (autoscaling:DescribeAutoScalingInstances otherwise).
    # This restricts every instance tag KEY to letters, digits and
    # + - = . , _ : @ (no spaces, no "/"; not ".", ".." or "_index"): a launch
    # with a non-compliant instance tag key fails. See the group's tags below.
    instance_metadata_tags = "enabled"
  }
}

# ---- The group --------------------------------------------------------------

resource "aws_autoscaling_group" "berth" {
  name                = local.group_name
  vpc_zone_identifier = var.subnet_ids
  min_size            = var.min_size
  max_size            = var.max_size
  desired_capacity    = var.desired_capacity

  launch_template {
    id = aws_launch_template.berth.id
    # A new image (a new template version) applies to launches from then on.
    # berth replaces instances when versions change, not images: replace the
    # running ones with an Instance Refresh.
    version = aws_launch_template.berth.latest_version
  }

  target_group_arns = [aws_lb_target_group.berth.arn]

  # The agent marks its instance Unhealthy itself when a container keeps
  # failing (autoscaling:SetInstanceHealth); EC2 status checks cover the
  # machine.
  health_check_type = "EC2"

  # Members count as InService only once their containers run and are
  # healthy (the launch hook below): do not block `terraform apply` on it.
  wait_for_capacity_timeout = "0"

  # berth: both hooks are declared here rather than as separate
  # aws_autoscaling_lifecycle_hook resources, so that the group's very first
  # instances already launch with them.
  initial_lifecycle_hook {
    name                 = "berth-launch"
    lifecycle_transition = "autoscaling:EC2_INSTANCE_LAUNCHING"
    # The agent heartbeats (autoscaling:RecordLifecycleActionHeartbeat) every
    # third of this timeout while its containers start, completes
    # (autoscaling:CompleteLifecycleAction) CONTINUE once every container is
    # running and healthy, and ABANDON after agent.launch_timeout (15m by
    # default). So the timeout
    # acts only when no agent runs (a broken image): the instance is then
    # replaced after it. Leave room for the boot: the first heartbeat comes a
    # third of the timeout after the agent starts.
    heartbeat_timeout = var.launch_hook_timeout
    default_result    = "ABANDON"
  }
  initial_lifecycle_hook {
    name                 = "berth-terminate"
    lifecycle_transition = "autoscaling:EC2_INSTANCE_TERMINATING"
    # When the group terminates a member (scale-in, a replacement), the agent
    # sees it in IMDS within agent.lifecycle_poll_interval (5s), stops its
    # containers in reverse start order, each with its grace period, then
    # completes CONTINUE. Make the timeout longer than the longest drain (the
    # largest stop_grace_period of each start wave, added up). A member that
    # retired itself (a rollout) has drained before it calls
    # autoscaling:TerminateInstanceInAutoScalingGroup, and completes this
    # hook right after, so it does not wait out the timeout.
    heartbeat_timeout = var.drain_timeout
    default_result    = "CONTINUE"
  }

  # berth: the operator interface (docs/rollouts.md), read from the GROUP.
  # PropagateAtLaunch is false for every berth:* tag: a copy on the instance
  # would be a stale launch-time value, the agent writes its own instance tags
  # (berth:versions, berth:pinned-cluster, berth:state), and its IAM policy
  # lets it tag no other key. A propagated tag becomes an instance tag, so its
  # key must follow the instance-metadata rule above, or launches fail.
  tag {
    # Required: the IAM policy allows the agent's group actions only on
    # groups with this tag, even where it equals the group's name.
    key                 = "berth:cluster"
    value               = var.cluster
    propagate_at_launch = false
  }
  tag {
    # The preferred version of every component (per component:
    # berth:version:<component>). Changing it starts a rollout. Whoever
    # changes it outside Terraform must change var.berth_version too, or the
    # next apply sets it back.
    key                 = "berth:version"
    value               = var.berth_version
    propagate_at_launch = false
  }
  dynamic "tag" {
    for_each = { for k, v in local.rollout_tags : k => v if v != null }
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = false
    }
  }

  # Instance tags: propagated, so their keys follow the instance-metadata
  # rule (var.instance_tags checks it).
  tag {
    key                 = "Name"
    value               = local.group_name
    propagate_at_launch = true
  }
  dynamic "tag" {
    for_each = var.instance_tags
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }
}

# ---- The load balancer --------------------------------------------------------

resource "aws_lb" "berth" {
  name_prefix        = "berth-"
  load_balancer_type = "network"
  internal           = var.internal
  subnets            = var.subnet_ids
}

# The group registers a member here once its launch hook completes (its
# containers are ready), and deregisters it before its terminating hook.
resource "aws_lb_target_group" "berth" {
  name_prefix = "berth-"
  port        = var.port
  protocol    = "TCP"
  vpc_id      = var.vpc_id
  target_type = "instance"

  # A rollout round waits for the deregistration: keep it short.
  deregistration_delay = 30

  # A member that retires itself stops its containers before it asks the
  # group to terminate it, so until the group deregisters it only failing
  # health checks take it out of rotation: check often.
  health_check {
    protocol            = "TCP"
    interval            = 10
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }
}

resource "aws_lb_listener" "berth" {
  load_balancer_arn = aws_lb.berth.arn
  port              = var.port
  protocol          = "TCP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.berth.arn
  }
}
