// The smallest module: built inside the appliance against its kernel's headers, loaded
// there, and heard from on the console.
#include <linux/init.h>
#include <linux/module.h>
#include <linux/utsname.h>

static int __init appliance_hello_init(void)
{
	pr_info("appliance_hello: loaded into %s\n", init_utsname()->release);
	return 0;
}

static void __exit appliance_hello_exit(void)
{
}

module_init(appliance_hello_init);
module_exit(appliance_hello_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("A module built inside an appliance");
