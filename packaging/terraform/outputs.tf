output "group_name" {
  value = aws_autoscaling_group.berth.name
}

output "nlb_dns_name" {
  value = aws_lb.berth.dns_name
}

output "instance_role" {
  value = aws_iam_role.berth.name
}
