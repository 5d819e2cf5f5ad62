"""The real provider's trust source: the host keys an instance prints to its console."""

from deploylib import aws
from deploylib.provider import AwsProvider


def test_no_console_keys_means_no_trusted_key(aws_clients):
    ec2 = aws_clients.ec2("us-east-1")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    iid = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    inst = aws.describe(ec2, "us-east-1", [iid])[0]
    # moto's console output carries no SSH host key block, so nothing is trusted, and an
    # SSH wait would keep waiting rather than trust whichever key answers.
    assert AwsProvider().trusted_keys(aws_clients, inst) == ()
