"""ROS 2 adapters: the only part of panoptic_ros that imports rclpy or message types."""
