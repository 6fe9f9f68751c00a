"""panoptic_ros: real-time panoptic segmentation for ROS 2.

Only ``panoptic_ros.ros`` imports rclpy and message types; the rest is plain Python + torch.
"""

__version__ = "0.1.0"
