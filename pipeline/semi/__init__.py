"""semi"""
